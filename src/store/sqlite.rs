//! The embedded store: SQLite in WAL mode with versioned migrations, for one node.
//!
//! Costs are stored as integer nano-dollars so that totals are exact sums of the
//! records, whatever order they are added in. Budget counters and rate buckets live
//! beside the connection, in the one process that serves this file: a counter's spend
//! is read from the ledger the first time its period is used and then kept up to date
//! by every append, so a reservation or a rate check costs a map lookup and no write.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use futures::future::BoxFuture;
use futures::FutureExt;
use rusqlite::{params, Connection, OptionalExtension};

use super::activity::{self, CallRow, CallStats, ExecutionDetail, ExecutionQuery, ModelCallRow, PulseRows};
use super::approvals::{APPROVAL_COLUMNS, PAUSED_COLUMNS};
use super::patch;
use super::usage::{self, Dialect, UsageQuery, UsageRow};
use super::{
    now_ms, ApprovalQuery, ApprovalRecord, ApprovalStatus, Balance, BudgetLine, ConsoleSession, Decided,
    ExecutionRecord, FileChange, Giveback, HandleEnd, HandleRecord, HandleStatus, Hold, KeptMemory, KeyCreated, Lease,
    MemoryWrite, Overdrawn, Owner, PausedRecord, Record, Returned, SessionRecord, SpendScope, Store, StoreError,
    StoredFile, StoredKey, StoredMemory,
};

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
    // 3: API keys created with `sandgate key create --in store`.
    "CREATE TABLE api_keys (
        name TEXT NOT NULL,
        user TEXT NOT NULL,
        team TEXT NOT NULL,
        role TEXT NOT NULL,
        hash BLOB NOT NULL,
        created_at_ms INTEGER NOT NULL,
        revoked_at_ms INTEGER
    );
    CREATE UNIQUE INDEX api_keys_live_name ON api_keys (name) WHERE revoked_at_ms IS NULL;",
    // 4: sessions and their memory images.
    "CREATE TABLE sessions (
        id TEXT PRIMARY KEY,
        user TEXT NOT NULL,
        team TEXT NOT NULL,
        key TEXT NOT NULL,
        language TEXT NOT NULL,
        created_at_ms INTEGER NOT NULL,
        used_at_ms INTEGER NOT NULL,
        ttl_ms INTEGER NOT NULL,
        executions INTEGER NOT NULL DEFAULT 0,
        image BLOB,
        image_bytes INTEGER NOT NULL DEFAULT 0,
        lease TEXT,
        lease_until_ms INTEGER
    );
    CREATE INDEX sessions_user ON sessions (user, created_at_ms);",
    // 5: what happened to sessions, for usage reports.
    "CREATE TABLE session_events (
        id INTEGER PRIMARY KEY,
        session_id TEXT NOT NULL,
        user TEXT NOT NULL,
        team TEXT NOT NULL,
        key TEXT NOT NULL,
        at_ms INTEGER NOT NULL,
        event TEXT NOT NULL,
        state_bytes INTEGER NOT NULL
    );
    CREATE INDEX session_events_at ON session_events (at_ms);",
    // 6: sessions' workspace files.
    "ALTER TABLE sessions ADD COLUMN files INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE sessions ADD COLUMN file_bytes INTEGER NOT NULL DEFAULT 0;
    CREATE TABLE session_files (
        session_id TEXT NOT NULL,
        path TEXT NOT NULL,
        dir INTEGER NOT NULL,
        size INTEGER NOT NULL,
        data BLOB,
        PRIMARY KEY (session_id, path)
    );",
    // 7: executions started in the background, and their results for a while.
    "CREATE TABLE execution_handles (
        id TEXT PRIMARY KEY,
        user TEXT NOT NULL,
        team TEXT NOT NULL,
        key TEXT NOT NULL,
        session_id TEXT,
        status TEXT NOT NULL,
        created_at_ms INTEGER NOT NULL,
        ended_at_ms INTEGER,
        expires_at_ms INTEGER NOT NULL,
        cancel_requested INTEGER NOT NULL DEFAULT 0,
        body TEXT
    );
    CREATE INDEX execution_handles_expiry ON execution_handles (expires_at_ms);",
    // 8: sessions found by when they expire, so the sweep reads only those.
    "CREATE INDEX sessions_expiry ON sessions (used_at_ms + ttl_ms);",
    // 9: images in a table of their own. SQLite stores a row's columns in order, so
    // every column after a large image in `sessions` (the counts, the file totals)
    // cost a walk through the image's overflow pages: counting a user's sessions read
    // all their images.
    "CREATE TABLE session_images (session_id TEXT PRIMARY KEY, image BLOB NOT NULL);
    INSERT INTO session_images (session_id, image) SELECT id, image FROM sessions WHERE image IS NOT NULL;
    ALTER TABLE sessions DROP COLUMN image;",
    // 10: executions' console lines, for the console's execution page (only those
    // that printed any).
    "CREATE TABLE execution_logs (execution_id TEXT PRIMARY KEY, logs TEXT NOT NULL);",
    // 11: a session's memory as one row per kept page, so an execution writes only
    // the pages it changed; `session_images` is converted by `convert_images` and
    // dropped in the same transaction. A rowid table: its rows (4 KiB each) are too
    // large for a WITHOUT ROWID one, which keeps rows in its key's B-tree.
    "CREATE TABLE session_pages (
        session_id TEXT NOT NULL,
        page INTEGER NOT NULL,
        bytes BLOB NOT NULL,
        PRIMARY KEY (session_id, page)
    );
    ALTER TABLE sessions ADD COLUMN memory_size INTEGER NOT NULL DEFAULT 0;",
    // 12: workspace files as rows of `FILE_CHUNK` bytes, so an upload or a download
    // holds one chunk at a time (`convert_file_chunks` moves the files' bytes); each
    // file's version, so a reader notices a file rewritten under it; and signed-in
    // console browsers, so a sign-out ends a sign-in on every replica; bytes each
    // principal wrote to each mounted directory per day, for its quota.
    "CREATE TABLE session_file_chunks (
        session_id TEXT NOT NULL,
        path TEXT NOT NULL,
        seq INTEGER NOT NULL,
        bytes BLOB NOT NULL,
        PRIMARY KEY (session_id, path, seq)
    );
    ALTER TABLE session_files ADD COLUMN version INTEGER NOT NULL DEFAULT 0;
    CREATE TABLE console_sessions (
        id TEXT PRIMARY KEY,
        subject TEXT NOT NULL,
        created_at_ms INTEGER NOT NULL,
        expires_at_ms INTEGER NOT NULL,
        ended_at_ms INTEGER
    );
    CREATE INDEX console_sessions_expiry ON console_sessions (expires_at_ms);
    CREATE TABLE mount_writes (
        user TEXT NOT NULL,
        team TEXT NOT NULL,
        key TEXT NOT NULL,
        mount TEXT NOT NULL,
        day_ms INTEGER NOT NULL,
        bytes INTEGER NOT NULL,
        PRIMARY KEY (user, team, key, mount, day_ms)
    );",
    // 13: the coding agent's own session each execution and model call belongs to.
    "ALTER TABLE executions ADD COLUMN agent_session TEXT;
    ALTER TABLE model_calls ADD COLUMN agent_session TEXT;
    CREATE INDEX executions_agent_session ON executions (agent_session, started_at_ms);
    CREATE INDEX model_calls_agent_session ON model_calls (agent_session, started_at_ms);",
    // 14: personal keys: issued to a person signed in with SSO, for their teams, until
    // they expire.
    "ALTER TABLE api_keys ADD COLUMN teams TEXT;
    ALTER TABLE api_keys ADD COLUMN expires_at_ms INTEGER;
    ALTER TABLE api_keys ADD COLUMN owner TEXT;
    CREATE INDEX api_keys_owner ON api_keys (owner) WHERE revoked_at_ms IS NULL;",
    // 15: executions paused at calls that wait for a person, and those approvals.
    "CREATE TABLE paused_executions (
        id TEXT PRIMARY KEY,
        user_name TEXT NOT NULL,
        team TEXT NOT NULL,
        key_name TEXT NOT NULL,
        context TEXT NOT NULL,
        state TEXT NOT NULL,
        memory BLOB NOT NULL,
        paused_at_ms INTEGER NOT NULL,
        claimed_at_ms INTEGER
    );
    CREATE TABLE approvals (
        id TEXT PRIMARY KEY,
        execution_id TEXT NOT NULL,
        call_id INTEGER NOT NULL,
        user_name TEXT NOT NULL,
        team TEXT NOT NULL,
        key_name TEXT NOT NULL,
        tool TEXT NOT NULL,
        args TEXT NOT NULL,
        detail TEXT NOT NULL,
        status TEXT NOT NULL,
        created_at_ms INTEGER NOT NULL,
        expires_at_ms INTEGER NOT NULL,
        decided_by TEXT,
        decided_at_ms INTEGER,
        reason TEXT
    );
    CREATE INDEX approvals_execution ON approvals (execution_id);
    CREATE INDEX approvals_pending ON approvals (user_name) WHERE status = 'pending';
    CREATE INDEX approvals_created ON approvals (created_at_ms);",
    // 16: the bytes an execution changed in pages a session keeps, as one patch per
    // execution (see `store::patch`); each page and patch carries the execution
    // count of the return that wrote it. A patch is about 1 KiB, so its rows live in
    // the key's B-tree (one tree written per patch, not a table and its index).
    "ALTER TABLE session_pages ADD COLUMN seq INTEGER NOT NULL DEFAULT 0;
    CREATE TABLE session_patches (
        session_id TEXT NOT NULL,
        seq INTEGER NOT NULL,
        bytes BLOB NOT NULL,
        PRIMARY KEY (session_id, seq)
    ) WITHOUT ROWID;
    ALTER TABLE sessions ADD COLUMN patches INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE sessions ADD COLUMN patch_bytes INTEGER NOT NULL DEFAULT 0;",
];

/// The migration after which [`convert_images`] runs.
const PAGES_MIGRATION: usize = 11;
/// The migration after which [`convert_file_chunks`] runs.
const CHUNKS_MIGRATION: usize = 12;

/// Moves each workspace file's bytes (one `data` blob) into `session_file_chunks`.
fn convert_file_chunks(tx: &rusqlite::Transaction) -> Result<(), StoreError> {
    let files: Vec<(String, String)> =
        all(tx, "SELECT session_id, path FROM session_files WHERE dir = 0 AND data IS NOT NULL", [], |row| {
            Ok((row.get(0)?, row.get(1)?))
        })?;
    for (id, path) in files {
        let data: Vec<u8> = tx
            .query_row("SELECT data FROM session_files WHERE session_id = ?1 AND path = ?2", params![id, path], |row| {
                row.get(0)
            })
            .map_err(err)?;
        put_chunks(tx, &id, &path, data.chunks(super::FILE_CHUNK).map(|chunk| Ok(chunk.to_vec())))?;
        tx.execute(
            "UPDATE session_files SET data = NULL, version = ?3 WHERE session_id = ?1 AND path = ?2",
            params![id, path, super::new_version()],
        )
        .map_err(err)?;
    }
    Ok(())
}

/// Writes a file's chunks, in order (inside the caller's transaction).
fn put_chunks(
    tx: &Connection,
    id: &str,
    path: &str,
    chunks: impl Iterator<Item = Result<Vec<u8>, StoreError>>,
) -> Result<(), StoreError> {
    let mut insert = tx
        .prepare_cached("INSERT INTO session_file_chunks (session_id, path, seq, bytes) VALUES (?1, ?2, ?3, ?4)")
        .map_err(err)?;
    for (seq, chunk) in chunks.enumerate() {
        insert.execute(params![id, path, seq as i64, chunk?]).map_err(err)?;
    }
    Ok(())
}

/// Moves each session's image (one blob, `sandbox::MemoryImage`'s first encoding)
/// into `session_pages`, then drops the images' table.
fn convert_images(tx: &rusqlite::Transaction) -> Result<(), StoreError> {
    let images: Vec<(String, Vec<u8>)> = {
        let mut statement = tx.prepare("SELECT session_id, image FROM session_images").map_err(err)?;
        let rows = statement.query_map([], |row| Ok((row.get(0)?, row.get(1)?))).map_err(err)?;
        rows.collect::<Result<_, _>>().map_err(err)?
    };
    for (id, image) in images {
        let memory = super::legacy_image(&image)
            .ok_or_else(|| StoreError(format!("session `{id}`'s image cannot be read; the ledger is damaged")))?;
        for (page, bytes) in &memory.pages {
            tx.execute(
                "INSERT INTO session_pages (session_id, page, bytes) VALUES (?1, ?2, ?3)",
                params![id, page, bytes],
            )
            .map_err(err)?;
        }
        tx.execute(
            "UPDATE sessions SET memory_size = ?2, image_bytes = ?3 WHERE id = ?1",
            params![id, to_i64(memory.size), to_i64((memory.pages.len() * super::PAGE) as u64)],
        )
        .map_err(err)?;
    }
    tx.execute_batch("DROP TABLE session_images").map_err(err)
}

fn err(e: impl std::fmt::Display) -> StoreError {
    StoreError(e.to_string())
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

type CounterKey = (SpendScope, i64);

#[derive(Debug)]
struct Held {
    keys: Vec<CounterKey>,
    nanos: i64,
    tokens: u64,
    expires_at_ms: i64,
}

/// Spend per (scope, period start) and the reservations in flight against it.
#[derive(Debug, Default)]
struct Counters {
    spent: HashMap<CounterKey, Balance>,
    held: HashMap<String, Held>,
}

impl Counters {
    fn reserved(&self, key: &CounterKey) -> Balance {
        let mut sum = Balance::default();
        for held in self.held.values().filter(|h| h.keys.contains(key)) {
            sum.used_nanos += held.nanos;
            sum.used_tokens += held.tokens;
        }
        sum
    }

    fn balance(&self, key: &CounterKey) -> Balance {
        let spent = self.spent.get(key).copied().unwrap_or_default();
        let reserved = self.reserved(key);
        Balance {
            used_nanos: spent.used_nanos + reserved.used_nanos,
            used_tokens: spent.used_tokens + reserved.used_tokens,
        }
    }
}

#[derive(Debug)]
struct Bucket {
    tokens: f64,
    updated: Instant,
}

struct Inner {
    /// The ledger writer's connection. Held across a commit and the counter updates
    /// that follow it, and while a new counter is read from the ledger, so that the
    /// counter counts every model call exactly once.
    writer: Mutex<Connection>,
    /// Reads (usage reports, activity, sessions), on connections of their own so they
    /// never wait behind a commit, and several of them, so one slow report does not
    /// hold up every other read.
    readers: Vec<Mutex<Connection>>,
    /// Where the next read that finds every reader busy waits.
    next_reader: std::sync::atomic::AtomicUsize,
    /// Spend and reservations. Taken after `writer` when both are, and held only for
    /// the counters' own work: a reservation never waits for a commit.
    counters: Mutex<Counters>,
    buckets: Mutex<HashMap<(String, &'static str), Bucket>>,
}

/// A SQLite store file.
#[derive(Clone)]
pub struct SqliteStore {
    inner: Arc<Inner>,
    /// Whether a commit returns without waiting for the disk (see
    /// [`SqliteStore::write_now`]).
    quick_commits: bool,
}

impl SqliteStore {
    /// Opens `path`, creating it and its directory if needed, and applies pending
    /// migrations.
    pub fn open(path: &Path, synchronous: Synchronous) -> Result<Self, StoreError> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| StoreError(format!("cannot create {}: {e}", dir.display())))?;
        }
        let mut writer = connect(path, synchronous)?;
        migrate(&mut writer)?;
        let readers =
            (0..READERS).map(|_| connect(path, synchronous).map(Mutex::new)).collect::<Result<Vec<_>, _>>()?;
        // The writer checkpoints only as a backstop; a thread of the store's own does
        // it, off every commit's path.
        writer.pragma_update(None, "wal_autocheckpoint", WAL_BACKSTOP_PAGES).map_err(err)?;
        let checkpointer = connect(path, synchronous)?;
        let inner = Arc::new(Inner {
            writer: Mutex::new(writer),
            readers,
            next_reader: Default::default(),
            counters: Mutex::new(Counters::default()),
            buckets: Mutex::new(HashMap::new()),
        });
        let store = Arc::downgrade(&inner);
        std::thread::Builder::new()
            .name("sandgate-checkpoint".into())
            .spawn(move || checkpoints(checkpointer, store))
            .map_err(|e| StoreError(format!("cannot start the checkpoint thread: {e}")))?;
        Ok(Self { inner, quick_commits: synchronous == Synchronous::Normal })
    }

    /// Runs `work` on the writer now, on the caller's thread, when the writer is free
    /// and SQLite's write lock is to be had without waiting for it (another process,
    /// such as the command-line tool, may hold it); else on a blocking thread, as
    /// [`SqliteStore::blocking`] does. For one or two short statements on an
    /// execution's path: the hop to a blocking thread and back costs more than they
    /// do (about 60 µs against 35 for a session's lease on the development machine).
    /// Only when commits do not wait for the disk (`synchronous = "normal"`): with
    /// `"full"`, each one waits for an `fsync`, which no async thread should.
    fn write_now<T: Send + 'static>(
        &self,
        work: impl Fn(&Connection) -> rusqlite::Result<T> + Send + 'static,
    ) -> BoxFuture<'static, Result<T, StoreError>> {
        let free = if !self.quick_commits {
            None
        } else {
            match self.inner.writer.try_lock() {
                Ok(writer) => Some(writer),
                Err(std::sync::TryLockError::Poisoned(poisoned)) => Some(poisoned.into_inner()),
                Err(std::sync::TryLockError::WouldBlock) => None,
            }
        };
        if let Some(writer) = free {
            // A statement that finds the database locked fails at once, having
            // written nothing, and goes to a thread that may wait.
            let now = writer.busy_timeout(std::time::Duration::ZERO).and_then(|()| {
                let now = work(&writer);
                writer.busy_timeout(BUSY_TIMEOUT).map(|()| now)
            });
            match now {
                Ok(Err(rusqlite::Error::SqliteFailure(e, _))) if e.code == rusqlite::ErrorCode::DatabaseBusy => {}
                Ok(done) => return futures::future::ready(done.map_err(err)).boxed(),
                Err(error) => return futures::future::ready(Err(err(error))).boxed(),
            }
        }
        self.blocking(move |inner| work(&lock(&inner.writer)).map_err(err))
    }

    /// Runs `work` on a blocking thread.
    fn blocking<T: Send + 'static>(
        &self,
        work: impl FnOnce(&Inner) -> Result<T, StoreError> + Send + 'static,
    ) -> BoxFuture<'static, Result<T, StoreError>> {
        let inner = self.inner.clone();
        async move { tokio::task::spawn_blocking(move || work(&inner)).await.map_err(err)? }.boxed()
    }
}

/// Pages of write-ahead log past which the writer checkpoints it itself, in a
/// commit's path: only when [`checkpoints`] falls that far behind.
const WAL_BACKSTOP_PAGES: i64 = 20_000;

/// How often [`checkpoints`] copies the write-ahead log into the database.
const CHECKPOINT_EVERY: std::time::Duration = std::time::Duration::from_millis(100);

/// Copies committed pages from the write-ahead log into the database file every
/// [`CHECKPOINT_EVERY`], on `connection`, until the store is dropped. With SQLite's
/// own automatic checkpoint (every 1,000 pages) the commit that crossed the line did
/// it, a few milliseconds while every execution waiting on that commit waited too:
/// about one in thirty executions in a session, whose pages fill the log quickly.
/// Passive, so it waits for no reader and blocks no writer.
fn checkpoints(connection: Connection, store: std::sync::Weak<Inner>) {
    while store.strong_count() > 0 {
        std::thread::sleep(CHECKPOINT_EVERY);
        if let Err(error) = connection.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(())) {
            tracing::warn!(%error, "a checkpoint of the store's write-ahead log failed");
        }
    }
}

/// How long a statement waits for another connection's write to end.
const BUSY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

fn connect(path: &Path, synchronous: Synchronous) -> Result<Connection, StoreError> {
    let connection = Connection::open(path).map_err(|e| StoreError(format!("cannot open {}: {e}", path.display())))?;
    connection.busy_timeout(BUSY_TIMEOUT).map_err(err)?;
    connection.pragma_update(None, "journal_mode", "WAL").map_err(err)?;
    let sync = match synchronous {
        Synchronous::Normal => "NORMAL",
        Synchronous::Full => "FULL",
    };
    connection.pragma_update(None, "synchronous", sync).map_err(err)?;
    Ok(connection)
}

fn migrate(connection: &mut Connection) -> Result<(), StoreError> {
    let tx = connection.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate).map_err(err)?;
    tx.execute_batch(
        "CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY, applied_at_ms INTEGER NOT NULL)",
    )
    .map_err(err)?;
    let current: i64 = tx
        .query_row("SELECT MAX(version) FROM schema_migrations", [], |row| row.get::<_, Option<i64>>(0))
        .optional()
        .map_err(err)?
        .flatten()
        .unwrap_or(0);
    if current > MIGRATIONS.len() as i64 {
        return Err(StoreError(format!(
            "the ledger is at schema version {current}, newer than this sandgate knows ({})",
            MIGRATIONS.len()
        )));
    }
    for (index, sql) in MIGRATIONS.iter().enumerate().skip(current as usize) {
        tx.execute_batch(sql).map_err(|e| StoreError(format!("migration {}: {e}", index + 1)))?;
        if index + 1 == PAGES_MIGRATION {
            convert_images(&tx)?;
        }
        if index + 1 == CHUNKS_MIGRATION {
            convert_file_chunks(&tx)?;
        }
        tx.execute(
            "INSERT INTO schema_migrations (version, applied_at_ms) VALUES (?1, ?2)",
            params![index as i64 + 1, now_ms()],
        )
        .map_err(err)?;
    }
    tx.commit().map_err(err)
}

fn to_i64(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// Inserts `records` (inside the caller's transaction).
fn insert<'a>(tx: &Connection, records: impl IntoIterator<Item = &'a Record>) -> Result<(), StoreError> {
    {
        let mut execution = tx
            .prepare_cached(
                "INSERT OR REPLACE INTO executions (id, user, team, key, started_at_ms, ended_at_ms, outcome, fuel, wall_ms, memory_bytes, host_calls, agent_session)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)",
            )
            .map_err(err)?;
        let mut logs = tx
            .prepare_cached("INSERT OR REPLACE INTO execution_logs (execution_id, logs) VALUES (?1, ?2)")
            .map_err(err)?;
        let mut call = tx
            .prepare_cached(
                "INSERT INTO calls (execution_id, user, team, name, started_at_ms, latency_ms, outcome)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            )
            .map_err(err)?;
        let mut session = tx
            .prepare_cached(
                "INSERT INTO session_events (session_id, user, team, key, at_ms, event, state_bytes)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            )
            .map_err(err)?;
        let mut model = tx
            .prepare_cached(
                "INSERT INTO model_calls (execution_id, user, team, key, model, tier, provider, input_tokens, output_tokens, cached_tokens, cost_nanousd, started_at_ms, latency_ms, status, fallback_chain, tags, agent_session)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17)",
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
                        r.host_calls,
                        r.agent_session
                    ])
                    .and_then(|_| if r.logs.is_empty() { Ok(0) } else { logs.execute(params![r.id, r.logs]) })
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
                        r.cost_nanos(),
                        r.started_at_ms,
                        to_i64(r.latency_ms),
                        r.status,
                        serde_json::to_string(&r.fallback_chain).unwrap_or_default(),
                        r.tags.to_string(),
                        r.agent_session
                    ])
                    .map(drop),
                Record::Session(r) => session
                    .execute(params![r.session_id, r.user, r.team, r.key, r.at_ms, r.event, to_i64(r.state_bytes)])
                    .map(drop),
                Record::Release(_) | Record::Draw { .. } => Ok(()),
            }
            .map_err(err)?;
        }
    }
    Ok(())
}

/// Commits `records` and `returns` in one transaction of `writer`, with what each
/// return did; the records each return adds go in as it turns out. `guarded` puts
/// each return in a savepoint of its own, so that one that fails is undone alone;
/// unguarded, the first that fails undoes the whole transaction and the answer is
/// `None` (nothing was written).
fn commit_batch(
    writer: &mut Connection,
    records: &[Record],
    returns: &[Giveback],
    guarded: bool,
) -> Result<Option<Vec<Result<Returned, StoreError>>>, StoreError> {
    let tx = writer.transaction().map_err(err)?;
    let mut answers = Vec::with_capacity(returns.len());
    for giveback in returns {
        let give = || {
            let memory = giveback.memory.as_ref().map(|memory| memory.write(None));
            give_back(&tx, &giveback.id, &giveback.lease, memory.as_ref(), Some(giveback.ran_at_ms), &giveback.files)
        };
        let answer = if guarded { in_savepoint(&tx, give) } else { give() };
        if answer.is_err() && !guarded {
            // Dropped, the transaction rolls back.
            return Ok(None);
        }
        answers.push(answer);
    }
    let added = returns.iter().zip(&answers).flat_map(|(giveback, answer)| giveback.records_after(answer));
    insert(&tx, records.iter().chain(added))?;
    tx.commit().map_err(err)?;
    Ok(Some(answers))
}

/// Runs `work` in a savepoint of `connection`'s open transaction: undone alone if it
/// fails, kept (until the transaction ends) if it succeeds. Its three statements are
/// cached, where rusqlite's `Savepoint` prepares each of them every time.
fn in_savepoint<T>(connection: &Connection, work: impl FnOnce() -> Result<T, StoreError>) -> Result<T, StoreError> {
    let run = |sql: &str| connection.prepare_cached(sql).and_then(|mut statement| statement.execute([])).map_err(err);
    run("SAVEPOINT give_back")?;
    match work() {
        Ok(answer) => {
            run("RELEASE give_back")?;
            Ok(answer)
        }
        Err(error) => {
            // Undone, then ended: a savepoint rolled back to stays open until released.
            run("ROLLBACK TO give_back").and_then(|_| run("RELEASE give_back"))?;
            Err(error)
        }
    }
}

/// Gives session `id` back from `lease` (inside the caller's transaction, which
/// the caller commits whatever the answer): see [`Store::return_session`].
fn give_back(
    tx: &Connection,
    id: &str,
    lease: &str,
    memory: Option<&MemoryWrite<'_>>,
    ran_at_ms: Option<i64>,
    files: &[FileChange],
) -> Result<Returned, StoreError> {
    let size = memory.map(|memory| to_i64(memory.size));
    let bytes = memory.map(|memory| to_i64(memory.bytes));
    let cap = memory.and_then(|memory| memory.cap.as_ref());
    // The cap counts every live session of the user, read in this transaction
    // (this connection writes one transaction at a time, so returns that would pass
    // it together are checked one after the other).
    if let (Some(cap), Some(bytes)) = (cap, bytes) {
        let held: Option<i64> = tx
            .query_row("SELECT 1 FROM sessions WHERE id = ?1 AND lease = ?2", params![id, lease], |row| row.get(0))
            .optional()
            .map_err(err)?;
        if held.is_none() {
            return Ok(Returned::NotHeld);
        }
        let others: i64 = tx
            .query_row(
                "SELECT coalesce(sum(image_bytes), 0) FROM sessions
                 WHERE user = ?1 AND id != ?2 AND used_at_ms + ttl_ms > ?3",
                params![cap.user, id, now_ms()],
                |row| row.get(0),
            )
            .map_err(err)?;
        let total = others.max(0) as u64 + bytes.max(0) as u64;
        if total > cap.max_bytes {
            tx.execute(
                "UPDATE sessions SET lease = NULL, lease_until_ms = NULL WHERE id = ?1 AND lease = ?2",
                params![id, lease],
            )
            .map_err(err)?;
            return Ok(Returned::OverCap { total });
        }
    }
    let patch = memory.map_or(&[][..], |memory| memory.patch);
    let returned = tx
        .prepare_cached(
            "UPDATE sessions SET image_bytes = coalesce(?3, image_bytes), memory_size = coalesce(?5, memory_size),
                used_at_ms = coalesce(?4, used_at_ms), executions = executions + (?4 IS NOT NULL),
                patches = patches + (?6 > 0), patch_bytes = patch_bytes + ?6,
                lease = NULL, lease_until_ms = NULL
             WHERE id = ?1 AND lease = ?2
             RETURNING executions, patches, patch_bytes",
        )
        .and_then(|mut update| {
            update
                .query_row(params![id, lease, bytes, ran_at_ms, size, patch.len() as i64], |row| {
                    Ok((row.get::<_, i64>(0)?, row.get::<_, i64>(1)?, row.get::<_, i64>(2)?))
                })
                .optional()
        })
        .map_err(err)?;
    let Some((seq, patches, patch_bytes)) = returned else {
        return Ok(Returned::NotHeld);
    };
    if let Some(memory) = memory {
        let mut put = tx
            .prepare_cached(
                "INSERT INTO session_pages (session_id, page, bytes, seq) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (session_id, page) DO UPDATE SET bytes = excluded.bytes, seq = excluded.seq",
            )
            .map_err(err)?;
        for (page, bytes) in &memory.pages {
            put.execute(params![id, page, bytes, seq]).map_err(err)?;
        }
        if !patch.is_empty() {
            tx.prepare_cached("INSERT INTO session_patches (session_id, seq, bytes) VALUES (?1, ?2, ?3)")
                .and_then(|mut insert| insert.execute(params![id, seq, patch]))
                .map_err(err)?;
            if patches >= patch::COMPACT_COUNT || patch_bytes >= patch::COMPACT_BYTES {
                compact(tx, id, seq)?;
            }
        }
    }
    if !files.is_empty() {
        apply_files(tx, id, files)?;
    }
    Ok(Returned::Done)
}

/// Folds session `id`'s patches into its pages, as written by the return of `seq`
/// (inside the caller's transaction).
fn compact(tx: &Connection, id: &str, seq: i64) -> Result<(), StoreError> {
    let patches: Vec<(i64, Vec<u8>)> =
        all(tx, "SELECT seq, bytes FROM session_patches WHERE session_id = ?1 ORDER BY seq", params![id], |row| {
            Ok((row.get(0)?, row.get(1)?))
        })?;
    let touched = patch::touched(&patches)?;
    let mut pages = Vec::with_capacity(touched.len());
    {
        let mut read = tx
            .prepare_cached("SELECT seq, bytes FROM session_pages WHERE session_id = ?1 AND page = ?2")
            .map_err(err)?;
        for page in touched {
            let (written, bytes): (i64, Vec<u8>) =
                read.query_row(params![id, page], |row| Ok((row.get(0)?, row.get(1)?))).map_err(err)?;
            pages.push((page, written, bytes));
        }
    }
    patch::apply(&mut pages, &patches)?;
    let mut put = tx
        .prepare_cached("UPDATE session_pages SET bytes = ?3, seq = ?4 WHERE session_id = ?1 AND page = ?2")
        .map_err(err)?;
    for (page, _, bytes) in &pages {
        put.execute(params![id, page, bytes, seq]).map_err(err)?;
    }
    tx.execute("DELETE FROM session_patches WHERE session_id = ?1", params![id]).map_err(err)?;
    tx.execute("UPDATE sessions SET patches = 0, patch_bytes = 0 WHERE id = ?1", params![id]).map_err(err)?;
    Ok(())
}

/// Model-call cost and tokens of `scope` since `since_ms`, from the ledger.
fn spent(connection: &Connection, scope: &SpendScope, since_ms: i64) -> Result<Balance, StoreError> {
    let (column, name) = scope.parts();
    let sql = format!(
        "SELECT COALESCE(SUM(cost_nanousd), 0), COALESCE(SUM(input_tokens + output_tokens), 0) FROM model_calls
         WHERE {column} = ?1 AND started_at_ms >= ?2"
    );
    connection
        .query_row(&sql, params![name, since_ms], |row| {
            Ok(Balance { used_nanos: row.get::<_, i64>(0)?, used_tokens: row.get::<_, i64>(1)? as u64 })
        })
        .map_err(err)
}

/// Read connections (see [`Inner::reader`]).
const READERS: usize = 4;

impl Inner {
    /// A read connection: a free one if there is one, else the next in turn.
    fn reader(&self) -> MutexGuard<'_, Connection> {
        for reader in &self.readers {
            match reader.try_lock() {
                Ok(guard) => return guard,
                Err(std::sync::TryLockError::Poisoned(poisoned)) => return poisoned.into_inner(),
                Err(std::sync::TryLockError::WouldBlock) => {}
            }
        }
        let next = self.next_reader.fetch_add(1, std::sync::atomic::Ordering::Relaxed) % self.readers.len();
        lock(&self.readers[next])
    }

    /// The counters, with every key in `lines` read from the ledger if it is new.
    fn counters_for(&self, lines: &[BudgetLine]) -> Result<MutexGuard<'_, Counters>, StoreError> {
        let counters = lock(&self.counters);
        if lines.iter().all(|line| counters.spent.contains_key(&(line.scope.clone(), line.since_ms))) {
            return Ok(counters);
        }
        drop(counters);
        // A new counter is read with no commit in flight (the writer's lock, taken
        // first, as `append` does), so the read and the counter updates of commits
        // count each model call once between them.
        let _writer = lock(&self.writer);
        let mut counters = lock(&self.counters);
        for line in lines {
            let key = (line.scope.clone(), line.since_ms);
            if let std::collections::hash_map::Entry::Vacant(entry) = counters.spent.entry(key) {
                entry.insert(spent(&self.reader(), &line.scope, line.since_ms)?);
            }
        }
        Ok(counters)
    }
}

const SESSION_COLUMNS: &str =
    "id, user, team, key, language, created_at_ms, used_at_ms, ttl_ms, executions, image_bytes, files, file_bytes";

fn session_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<SessionRecord> {
    Ok(SessionRecord {
        id: row.get(0)?,
        user: row.get(1)?,
        team: row.get(2)?,
        key: row.get(3)?,
        language: super::parse_language(&row.get::<_, String>(4)?)
            .map_err(|e| rusqlite::Error::FromSqlConversionFailure(4, rusqlite::types::Type::Text, e.into()))?,
        created_at_ms: row.get(5)?,
        used_at_ms: row.get(6)?,
        ttl_ms: row.get(7)?,
        executions: row.get::<_, i64>(8)? as u64,
        image_bytes: row.get::<_, i64>(9)? as u64,
        files: row.get::<_, i64>(10)? as u64,
        file_bytes: row.get::<_, i64>(11)? as u64,
    })
}

/// Applies `files` to session `id`'s workspace and counts it again (inside the
/// caller's transaction).
fn apply_files(tx: &Connection, id: &str, files: &[FileChange]) -> Result<(), StoreError> {
    let mut put = tx
        .prepare_cached(
            "INSERT INTO session_files (session_id, path, dir, size, data, version) VALUES (?1, ?2, ?3, ?4, NULL, ?5)
             ON CONFLICT (session_id, path) DO UPDATE SET dir = excluded.dir, size = excluded.size, data = NULL,
                 version = excluded.version",
        )
        .map_err(err)?;
    let mut clear =
        tx.prepare_cached("DELETE FROM session_file_chunks WHERE session_id = ?1 AND path = ?2").map_err(err)?;
    let mut remove = tx
        .prepare_cached(
            "DELETE FROM session_files
             WHERE session_id = ?1 AND (path = ?2 OR substr(path, 1, length(?2) + 1) = ?2 || '/')",
        )
        .map_err(err)?;
    let mut remove_chunks = tx
        .prepare_cached(
            "DELETE FROM session_file_chunks
             WHERE session_id = ?1 AND (path = ?2 OR substr(path, 1, length(?2) + 1) = ?2 || '/')",
        )
        .map_err(err)?;
    for change in files {
        match change {
            FileChange::Put(file) => {
                put.execute(params![id, file.path, file.dir, to_i64(file.size), super::new_version()]).map_err(err)?;
                clear.execute(params![id, file.path]).map_err(err)?;
                if !file.dir {
                    put_chunks(tx, id, &file.path, file.data.chunks(super::FILE_CHUNK).map(|c| Ok(c.to_vec())))?;
                }
            }
            FileChange::Spooled { path, size, from } => {
                put.execute(params![id, path, false, to_i64(*size), super::new_version()]).map_err(err)?;
                clear.execute(params![id, path]).map_err(err)?;
                put_chunks(tx, id, path, super::spooled_chunks(from, *size)?)?;
            }
            FileChange::Remove(path) => {
                remove.execute(params![id, path]).map_err(err)?;
                remove_chunks.execute(params![id, path]).map_err(err)?;
            }
        }
    }
    tx.execute(
        "UPDATE sessions SET files = (SELECT count(*) FROM session_files WHERE session_id = ?1),
            file_bytes = (SELECT coalesce(sum(size), 0) FROM session_files WHERE session_id = ?1)
         WHERE id = ?1",
        params![id],
    )
    .map_err(err)?;
    Ok(())
}

const HANDLE_COLUMNS: &str =
    "id, user, team, key, session_id, status, created_at_ms, ended_at_ms, expires_at_ms, cancel_requested, body";

fn handle_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<HandleRecord> {
    Ok(HandleRecord {
        id: row.get(0)?,
        user: row.get(1)?,
        team: row.get(2)?,
        key: row.get(3)?,
        session_id: row.get(4)?,
        status: HandleStatus::parse(&row.get::<_, String>(5)?)
            .map_err(|e| rusqlite::Error::FromSqlConversionFailure(5, rusqlite::types::Type::Text, e.into()))?,
        created_at_ms: row.get(6)?,
        ended_at_ms: row.get(7)?,
        expires_at_ms: row.get(8)?,
        cancel_requested: row.get(9)?,
        body: row.get(10)?,
    })
}

fn file_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<StoredFile> {
    Ok(StoredFile {
        path: row.get(0)?,
        dir: row.get(1)?,
        size: row.get::<_, i64>(2)?.max(0) as u64,
        version: row.get(3)?,
        data: Vec::new(),
    })
}

/// The bytes of the file at `path`, from its chunks.
fn file_data(connection: &Connection, id: &str, path: &str) -> Result<Vec<u8>, StoreError> {
    let chunks = all(
        connection,
        "SELECT bytes FROM session_file_chunks WHERE session_id = ?1 AND path = ?2 ORDER BY seq",
        params![id, path],
        |row| row.get::<_, Vec<u8>>(0),
    )?;
    Ok(chunks.concat())
}

const DIALECT: Dialect =
    Dialect { day: |time| format!("strftime('%Y-%m-%d', {time} / 1000, 'unixepoch')"), param: |n| format!("?{n}") };

/// Every row `sql` gives for `params`, each made by `row`.
fn approval_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<Result<ApprovalRecord, StoreError>> {
    let status: String = row.get(9)?;
    let record = ApprovalRecord {
        id: row.get(0)?,
        execution_id: row.get(1)?,
        call_id: row.get(2)?,
        user: row.get(3)?,
        team: row.get(4)?,
        key: row.get(5)?,
        tool: row.get(6)?,
        args: row.get(7)?,
        detail: row.get(8)?,
        status: ApprovalStatus::Pending,
        created_at_ms: row.get(10)?,
        expires_at_ms: row.get(11)?,
        decided_by: row.get(12)?,
        decided_at_ms: row.get(13)?,
        reason: row.get(14)?,
    };
    Ok(ApprovalStatus::parse(&status).map(|status| ApprovalRecord { status, ..record }))
}

fn paused_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<PausedRecord> {
    Ok(PausedRecord {
        id: row.get(0)?,
        user: row.get(1)?,
        team: row.get(2)?,
        key: row.get(3)?,
        context: row.get(4)?,
        state: row.get(5)?,
        memory: row.get(6)?,
        paused_at_ms: row.get(7)?,
        claimed_at_ms: row.get(8)?,
    })
}

fn all<T>(
    connection: &Connection,
    sql: &str,
    params: impl rusqlite::Params,
    row: impl FnMut(&rusqlite::Row<'_>) -> rusqlite::Result<T>,
) -> Result<Vec<T>, StoreError> {
    let mut statement = connection.prepare_cached(sql).map_err(err)?;
    let rows = statement.query_map(params, row).map_err(err)?;
    rows.collect::<Result<Vec<_>, _>>().map_err(err)
}

fn model_call_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<ModelCallRow> {
    Ok(activity::model_call(
        row.get(0)?,
        row.get(1)?,
        row.get(2)?,
        row.get(3)?,
        row.get(4)?,
        row.get(5)?,
        row.get(6)?,
        row.get(7)?,
        row.get(8)?,
        row.get(9)?,
    ))
}

fn execution_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<ExecutionRecord> {
    let count = |i: usize| row.get::<_, i64>(i).map(|n| n.max(0) as u64);
    Ok(ExecutionRecord {
        id: row.get(0)?,
        user: row.get(1)?,
        team: row.get(2)?,
        key: row.get(3)?,
        started_at_ms: row.get(4)?,
        ended_at_ms: row.get(5)?,
        outcome: row.get(6)?,
        fuel: count(7)?,
        wall_ms: count(8)?,
        memory_bytes: count(9)?,
        host_calls: u32::try_from(count(10)?).unwrap_or(u32::MAX),
        logs: String::new(),
        agent_session: row.get(11).unwrap_or(None),
    })
}

fn usage(connection: &Connection, query: &UsageQuery) -> Result<Vec<UsageRow>, StoreError> {
    let since = query.since_ms.unwrap_or(i64::MIN);
    let until = query.until_ms.unwrap_or(i64::MAX);
    let user = query.user.as_deref();
    let mut totals = BTreeMap::new();
    for part in usage::report(query.group_by, &DIALECT) {
        let mut statement = connection.prepare(&part.sql).map_err(err)?;
        let columns = statement.column_count();
        let rows = statement
            .query_map(params![since, until, user], |row| {
                let numbers = (1..columns).map(|i| row.get::<_, i64>(i)).collect::<Result<Vec<_>, _>>()?;
                Ok((row.get::<_, String>(0)?, numbers))
            })
            .map_err(err)?;
        for row in rows {
            let (group, numbers) = row.map_err(err)?;
            usage::fold(&mut totals, &part, group, &numbers);
        }
    }
    Ok(totals.into_values().collect())
}

impl Store for SqliteStore {
    fn append(
        &self,
        records: Vec<Record>,
        returns: Vec<Giveback>,
    ) -> BoxFuture<'_, Result<Vec<Result<Returned, StoreError>>, StoreError>> {
        self.blocking(move |inner| {
            let mut writer = lock(&inner.writer);
            // Returns are made bare first: a savepoint around each costs three more
            // statements, and almost every return succeeds. Should one fail, the
            // whole transaction is undone and made again with each return in a
            // savepoint of its own, so that one is undone alone and the batch still
            // commits.
            let mut result = commit_batch(&mut writer, &records, &returns, false);
            if matches!(result, Ok(None)) {
                result = commit_batch(&mut writer, &records, &returns, true);
            }
            // (What the returns add are session events, which count for no budget.)
            let mut counters = lock(&inner.counters);
            for record in &records {
                match record {
                    Record::Model(r) if result.is_ok() => {
                        for ((scope, since_ms), spent) in counters.spent.iter_mut() {
                            if *since_ms <= r.started_at_ms && scope.covers(&r.user, &r.team) {
                                spent.used_nanos += r.cost_nanos();
                                spent.used_tokens += r.input_tokens + r.output_tokens;
                            }
                        }
                    }
                    // A failed commit still ends its reservations: the calls they held
                    // for are over either way.
                    Record::Release(id) => {
                        counters.held.remove(id);
                    }
                    Record::Draw { hold, nanos, tokens } => {
                        if let Some(held) = counters.held.get_mut(hold) {
                            held.nanos = (held.nanos - nanos).max(0);
                            held.tokens = held.tokens.saturating_sub(*tokens);
                            if held.nanos == 0 && held.tokens == 0 {
                                counters.held.remove(hold);
                            }
                        }
                    }
                    _ => {}
                }
            }
            result.map(Option::unwrap_or_default)
        })
    }

    fn usage<'a>(&'a self, query: &'a UsageQuery) -> BoxFuture<'a, Result<Vec<UsageRow>, StoreError>> {
        let query = query.clone();
        self.blocking(move |inner| usage(&inner.reader(), &query))
    }

    fn executions<'a>(&'a self, query: &'a ExecutionQuery) -> BoxFuture<'a, Result<Vec<ExecutionRecord>, StoreError>> {
        let query = query.clone();
        self.blocking(move |inner| {
            let (since, until) = query.window();
            let params = params![since, until, query.user, query.outcome, i64::from(query.limit), query.agent_session];
            all(&inner.reader(), &activity::executions_sql(&DIALECT), params, execution_row)
        })
    }

    fn pulse<'a>(&'a self, query: &'a ExecutionQuery) -> BoxFuture<'a, Result<PulseRows, StoreError>> {
        let query = query.clone();
        self.blocking(move |inner| {
            let (since, until) = query.window();
            let reader = inner.reader();
            let buckets = all(&reader, &activity::pulse_sql(&DIALECT), params![since, until, query.user], |row| {
                Ok((row.get(0)?, row.get(1)?, row.get(2)?))
            })?;
            let total: i64 = buckets.iter().map(|(_, _, n)| n).sum();
            let sample = total.min(i64::from(query.limit));
            let (p50, p99) = activity::percentile_offsets(sample);
            let wall_at = |offset: i64| {
                reader
                    .query_row(
                        &activity::wall_at_sql(&DIALECT),
                        params![since, until, query.user, sample, offset],
                        |row| row.get::<_, i64>(0),
                    )
                    .optional()
                    .map(Option::unwrap_or_default)
                    .map_err(err)
            };
            let (p50_ms, p99_ms) = if sample > 0 { (wall_at(p50)?, wall_at(p99)?) } else { (0, 0) };
            Ok(PulseRows { buckets, p50_ms, p99_ms, sample })
        })
    }

    fn call_stats<'a>(&'a self, query: &'a ExecutionQuery) -> BoxFuture<'a, Result<Vec<CallStats>, StoreError>> {
        let query = query.clone();
        self.blocking(move |inner| {
            let (since, until) = query.window();
            let params = params![since, until, query.user];
            all(&inner.reader(), &activity::call_stats_sql(&DIALECT), params, |row| {
                Ok(CallStats {
                    name: row.get(0)?,
                    calls: row.get(1)?,
                    errors: row.get(2)?,
                    latency_ms_total: row.get(3)?,
                    latency_ms_max: row.get(4)?,
                })
            })
        })
    }

    fn model_calls<'a>(&'a self, query: &'a ExecutionQuery) -> BoxFuture<'a, Result<Vec<ModelCallRow>, StoreError>> {
        let query = query.clone();
        self.blocking(move |inner| {
            let (since, until) = query.window();
            let params = params![since, until, query.user, i64::from(query.limit), query.agent_session];
            all(&inner.reader(), &activity::recent_model_calls_sql(&DIALECT), params, model_call_row)
        })
    }

    fn execution<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<Option<ExecutionDetail>, StoreError>> {
        let id = id.to_string();
        self.blocking(move |inner| {
            let reader = inner.reader();
            let execution = reader
                .query_row(&activity::execution_sql(&DIALECT), params![id], execution_row)
                .optional()
                .map_err(err)?;
            let Some(execution) = execution else { return Ok(None) };
            let calls = all(&reader, &activity::calls_sql(&DIALECT), params![id], |row| {
                Ok(CallRow {
                    name: row.get(0)?,
                    started_at_ms: row.get(1)?,
                    latency_ms: row.get(2)?,
                    outcome: row.get(3)?,
                })
            })?;
            let model_calls = all(&reader, &activity::model_calls_sql(&DIALECT), params![id], model_call_row)?;
            let logs = reader
                .query_row(&activity::logs_sql(&DIALECT), params![id], |row| row.get::<_, String>(0))
                .optional()
                .map_err(err)?;
            Ok(Some(ExecutionDetail { execution, calls, model_calls, logs: activity::parse_logs(logs) }))
        })
    }

    fn reserve<'a>(&'a self, hold: &'a Hold) -> BoxFuture<'a, Result<Option<Overdrawn>, StoreError>> {
        let hold = hold.clone();
        self.blocking(move |inner| {
            let mut counters = inner.counters_for(&hold.lines)?;
            let now = now_ms();
            counters.held.retain(|_, held| held.expires_at_ms > now);
            for (index, line) in hold.lines.iter().enumerate() {
                let balance = counters.balance(&(line.scope.clone(), line.since_ms));
                let over_usd = line.limit_nanos.is_some_and(|limit| balance.used_nanos + hold.nanos > limit);
                let over_tokens = line.limit_tokens.is_some_and(|limit| balance.used_tokens + hold.tokens > limit);
                if over_usd || over_tokens {
                    return Ok(Some(Overdrawn { line: index, tokens: !over_usd, balance }));
                }
            }
            let keys = hold.lines.iter().map(|line| (line.scope.clone(), line.since_ms)).collect();
            counters.held.insert(
                hold.id.clone(),
                Held { keys, nanos: hold.nanos, tokens: hold.tokens, expires_at_ms: hold.expires_at_ms },
            );
            Ok(None)
        })
    }

    fn balances<'a>(&'a self, lines: &'a [BudgetLine]) -> BoxFuture<'a, Result<Vec<Balance>, StoreError>> {
        let lines = lines.to_vec();
        self.blocking(move |inner| {
            let counters = inner.counters_for(&lines)?;
            Ok(lines.iter().map(|line| counters.balance(&(line.scope.clone(), line.since_ms))).collect())
        })
    }

    fn take<'a>(
        &'a self,
        subject: &'a str,
        action: &'static str,
        per_minute: u32,
    ) -> BoxFuture<'a, Result<Result<(), u64>, StoreError>> {
        if per_minute == 0 {
            return futures::future::ready(Ok(Err(60))).boxed();
        }
        let capacity = per_minute as f64;
        let now = Instant::now();
        let mut buckets = lock(&self.inner.buckets);
        let bucket = buckets.entry((subject.to_string(), action)).or_insert(Bucket { tokens: capacity, updated: now });
        let elapsed = now.duration_since(bucket.updated).as_secs_f64();
        bucket.tokens = (bucket.tokens + elapsed * capacity / 60.0).min(capacity);
        bucket.updated = now;
        let taken = if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            Ok(())
        } else {
            Err(super::retry_after_secs(bucket.tokens, per_minute))
        };
        futures::future::ready(Ok(taken)).boxed()
    }

    fn create_key<'a>(
        &'a self,
        key: &'a StoredKey,
        owner_limit: Option<u32>,
    ) -> BoxFuture<'a, Result<KeyCreated, StoreError>> {
        let key = key.clone();
        self.blocking(move |inner| {
            let e = &key.entry;
            // One writer: the count and the insert cannot interleave with another's.
            let writer = lock(&inner.writer);
            if let (Some(owner), Some(limit)) = (&e.owner, owner_limit) {
                let live: i64 = writer
                    .query_row(
                        "SELECT count(*) FROM api_keys WHERE owner = ?1 AND revoked_at_ms IS NULL
                         AND (expires_at_ms IS NULL OR expires_at_ms > ?2)",
                        params![owner, now_ms()],
                        |row| row.get(0),
                    )
                    .map_err(err)?;
                if live >= i64::from(limit) {
                    return Ok(KeyCreated::OwnerFull);
                }
            }
            let inserted = writer.execute(
                "INSERT INTO api_keys (name, user, team, role, hash, created_at_ms, teams, expires_at_ms, owner)
                 SELECT ?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9
                 WHERE NOT EXISTS (SELECT 1 FROM api_keys WHERE name = ?1)
                 ON CONFLICT DO NOTHING",
                params![
                    e.name,
                    e.user,
                    e.team,
                    e.role.as_str(),
                    e.hash.as_slice(),
                    key.created_at_ms,
                    super::teams_column(e),
                    e.expires_at_ms,
                    e.owner
                ],
            );
            Ok(if inserted.map_err(err)? == 1 { KeyCreated::Created } else { KeyCreated::NameTaken })
        })
    }

    fn key_name_used<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<bool, StoreError>> {
        let name = name.to_string();
        self.blocking(move |inner| {
            inner
                .reader()
                .query_row("SELECT EXISTS (SELECT 1 FROM api_keys WHERE name = ?1)", params![name], |row| row.get(0))
                .map_err(err)
        })
    }

    fn revoke_key<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<bool, StoreError>> {
        let name = name.to_string();
        self.blocking(move |inner| {
            let revoked = lock(&inner.writer).execute(
                "UPDATE api_keys SET revoked_at_ms = ?2 WHERE name = ?1 AND revoked_at_ms IS NULL",
                params![name, now_ms()],
            );
            Ok(revoked.map_err(err)? > 0)
        })
    }

    fn keys(&self) -> BoxFuture<'_, Result<Vec<StoredKey>, StoreError>> {
        self.blocking(|inner| {
            let reader = inner.reader();
            let mut statement = reader
                .prepare_cached(
                    "SELECT name, user, team, role, hash, created_at_ms, teams, expires_at_ms, owner FROM api_keys
                     WHERE revoked_at_ms IS NULL AND (expires_at_ms IS NULL OR expires_at_ms > ?1) ORDER BY name",
                )
                .map_err(err)?;
            let rows = statement
                .query_map([now_ms()], |row| {
                    Ok((
                        row.get::<_, String>(0)?,
                        row.get::<_, String>(1)?,
                        row.get::<_, String>(2)?,
                        row.get::<_, String>(3)?,
                        row.get::<_, Vec<u8>>(4)?,
                        row.get::<_, i64>(5)?,
                        (
                            row.get::<_, Option<String>>(6)?,
                            row.get::<_, Option<i64>>(7)?,
                            row.get::<_, Option<String>>(8)?,
                        ),
                    ))
                })
                .map_err(err)?;
            let mut keys = Vec::new();
            for row in rows {
                let (name, user, team, role, hash, created_at_ms, (teams, expires_at_ms, owner)) = row.map_err(err)?;
                let hash = hash.try_into().map_err(|_| StoreError(format!("key `{name}` has a malformed hash")))?;
                let role = super::parse_role(&role)?;
                let teams = super::parse_teams(&name, &team, teams)?;
                let entry = crate::auth::KeyEntry { name, user, team, teams, role, hash, expires_at_ms, owner };
                keys.push(StoredKey { entry, created_at_ms });
            }
            Ok(keys)
        })
    }

    fn create_session<'a>(&'a self, session: &'a SessionRecord) -> BoxFuture<'a, Result<(), StoreError>> {
        let session = session.clone();
        self.blocking(move |inner| {
            let writer = lock(&inner.writer);
            // Sessions past their time, and not held, go as new ones come.
            writer
                .execute_batch(&format!(
                    "DELETE FROM session_files WHERE session_id IN (
                         SELECT id FROM sessions WHERE used_at_ms + ttl_ms <= {now} AND (lease IS NULL OR lease_until_ms <= {now}));
                     DELETE FROM session_file_chunks WHERE session_id IN (
                         SELECT id FROM sessions WHERE used_at_ms + ttl_ms <= {now} AND (lease IS NULL OR lease_until_ms <= {now}));
                     DELETE FROM session_pages WHERE session_id IN (
                         SELECT id FROM sessions WHERE used_at_ms + ttl_ms <= {now} AND (lease IS NULL OR lease_until_ms <= {now}));
                     DELETE FROM session_patches WHERE session_id IN (
                         SELECT id FROM sessions WHERE used_at_ms + ttl_ms <= {now} AND (lease IS NULL OR lease_until_ms <= {now}));
                     DELETE FROM sessions WHERE used_at_ms + ttl_ms <= {now} AND (lease IS NULL OR lease_until_ms <= {now});",
                    now = session.created_at_ms
                ))
                .map_err(err)?;
            writer
                .execute(
                    "INSERT INTO sessions (id, user, team, key, language, created_at_ms, used_at_ms, ttl_ms)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
                    params![
                        session.id,
                        session.user,
                        session.team,
                        session.key,
                        session.language.as_str(),
                        session.created_at_ms,
                        session.used_at_ms,
                        session.ttl_ms
                    ],
                )
                .map_err(err)?;
            Ok(())
        })
    }

    fn session<'a>(&'a self, id: &'a str, now_ms: i64) -> BoxFuture<'a, Result<Option<SessionRecord>, StoreError>> {
        let id = id.to_string();
        self.blocking(move |inner| {
            let sql = format!("SELECT {SESSION_COLUMNS} FROM sessions WHERE id = ?1 AND used_at_ms + ttl_ms > ?2");
            inner.reader().query_row(&sql, params![id, now_ms], session_row).optional().map_err(err)
        })
    }

    fn sessions<'a>(&'a self, user: &'a str, now_ms: i64) -> BoxFuture<'a, Result<Vec<SessionRecord>, StoreError>> {
        let user = user.to_string();
        self.blocking(move |inner| {
            let reader = inner.reader();
            let sql = format!(
                "SELECT {SESSION_COLUMNS} FROM sessions WHERE user = ?1 AND used_at_ms + ttl_ms > ?2
                 ORDER BY created_at_ms, id"
            );
            let mut statement = reader.prepare_cached(&sql).map_err(err)?;
            let rows = statement.query_map(params![user, now_ms], session_row).map_err(err)?;
            rows.collect::<Result<Vec<_>, _>>().map_err(err)
        })
    }

    fn session_totals<'a>(&'a self, user: &'a str, now_ms: i64) -> BoxFuture<'a, Result<(u64, u64), StoreError>> {
        let user = user.to_string();
        self.blocking(move |inner| {
            inner.reader()
                .query_row(
                    "SELECT count(*), coalesce(sum(image_bytes), 0) FROM sessions WHERE user = ?1 AND used_at_ms + ttl_ms > ?2",
                    params![user, now_ms],
                    |row| Ok((row.get::<_, i64>(0)?.max(0) as u64, row.get::<_, i64>(1)?.max(0) as u64)),
                )
                .map_err(err)
        })
    }

    fn end_session<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<bool, StoreError>> {
        let id = id.to_string();
        self.blocking(move |inner| {
            let mut writer = lock(&inner.writer);
            let tx = writer.transaction().map_err(err)?;
            tx.execute("DELETE FROM session_files WHERE session_id = ?1", params![id]).map_err(err)?;
            tx.execute("DELETE FROM session_file_chunks WHERE session_id = ?1", params![id]).map_err(err)?;
            tx.execute("DELETE FROM session_pages WHERE session_id = ?1", params![id]).map_err(err)?;
            tx.execute("DELETE FROM session_patches WHERE session_id = ?1", params![id]).map_err(err)?;
            let ended = tx.execute("DELETE FROM sessions WHERE id = ?1", params![id]).map_err(err)? > 0;
            tx.commit().map_err(err)?;
            Ok(ended)
        })
    }

    fn lease_session<'a>(
        &'a self,
        id: &'a str,
        owner: &'a Owner,
        lease: &'a str,
        until_ms: i64,
        now_ms: i64,
    ) -> BoxFuture<'a, Result<Lease, StoreError>> {
        let (id, owner, lease) = (id.to_string(), owner.clone(), lease.to_string());
        self.write_now(move |writer| {
            // One statement takes the lease and reads the session back.
            let sql = format!(
                "UPDATE sessions SET lease = ?2, lease_until_ms = ?3
                 WHERE id = ?1 AND user = ?5 AND team = ?6 AND key = ?7 AND used_at_ms + ttl_ms > ?4
                   AND (lease IS NULL OR lease_until_ms <= ?4)
                 RETURNING {SESSION_COLUMNS}"
            );
            let taken = writer.prepare_cached(&sql).and_then(|mut update| {
                update
                    .query_row(params![id, lease, until_ms, now_ms, owner.user, owner.team, owner.key], session_row)
                    .optional()
            })?;
            if let Some(session) = taken {
                return Ok(Lease::Taken { session });
            }
            let busy: Option<i64> = writer
                .query_row(
                    "SELECT lease_until_ms FROM sessions
                     WHERE id = ?1 AND user = ?3 AND team = ?4 AND key = ?5 AND used_at_ms + ttl_ms > ?2",
                    params![id, now_ms, owner.user, owner.team, owner.key],
                    |row| row.get::<_, Option<i64>>(0),
                )
                .optional()?
                .flatten();
            Ok(busy.map_or(Lease::Missing, |until_ms| Lease::Busy { until_ms }))
        })
    }

    fn session_memory<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<StoredMemory, StoreError>> {
        let id = id.to_string();
        self.blocking(move |inner| {
            // One read transaction, so the size and the pages are of the same moment.
            let mut reader = inner.reader();
            let tx = reader.transaction().map_err(err)?;
            let size: i64 = tx
                .query_row("SELECT memory_size FROM sessions WHERE id = ?1", params![id], |row| row.get(0))
                .optional()
                .map_err(err)?
                .unwrap_or(0);
            let pages: Vec<patch::SeqPage> = all(
                &tx,
                "SELECT page, seq, bytes FROM session_pages WHERE session_id = ?1 ORDER BY page",
                params![id],
                |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)),
            )?;
            let patches: Vec<(i64, Vec<u8>)> = all(
                &tx,
                "SELECT seq, bytes FROM session_patches WHERE session_id = ?1 ORDER BY seq",
                params![id],
                |row| Ok((row.get(0)?, row.get(1)?)),
            )?;
            tx.commit().map_err(err)?;
            Ok(StoredMemory { size: size as u64, pages: patch::applied(pages, &patches)? })
        })
    }

    fn return_session<'a>(
        &'a self,
        id: &'a str,
        lease: &'a str,
        memory: Option<&'a MemoryWrite<'a>>,
        ran_at_ms: Option<i64>,
        files: &'a [FileChange],
    ) -> BoxFuture<'a, Result<Returned, StoreError>> {
        let (id, lease) = (id.to_string(), lease.to_string());
        // A copy the blocking thread owns.
        let memory = memory.map(|memory| (KeptMemory::from(memory), memory.cap.clone()));
        let files = files.to_vec();
        self.blocking(move |inner| {
            let mut writer = lock(&inner.writer);
            let tx = writer.transaction().map_err(err)?;
            let memory = memory.as_ref().map(|(kept, cap)| kept.write(cap.clone()));
            let returned = give_back(&tx, &id, &lease, memory.as_ref(), ran_at_ms, &files)?;
            tx.commit().map_err(err)?;
            Ok(returned)
        })
    }

    fn session_files<'a>(&'a self, id: &'a str, data: bool) -> BoxFuture<'a, Result<Vec<StoredFile>, StoreError>> {
        let id = id.to_string();
        self.blocking(move |inner| {
            // One read transaction, so the list and the bytes are of the same moment.
            let mut reader = inner.reader();
            let tx = reader.transaction().map_err(err)?;
            let mut files = all(
                &tx,
                "SELECT path, dir, size, version FROM session_files WHERE session_id = ?1 ORDER BY path",
                params![id],
                file_row,
            )?;
            if data {
                for file in files.iter_mut().filter(|file| !file.dir) {
                    file.data = file_data(&tx, &id, &file.path)?;
                }
            }
            tx.commit().map_err(err)?;
            Ok(files)
        })
    }

    fn session_file<'a>(&'a self, id: &'a str, path: &'a str) -> BoxFuture<'a, Result<Option<StoredFile>, StoreError>> {
        let (id, path) = (id.to_string(), path.to_string());
        self.blocking(move |inner| {
            inner
                .reader()
                .query_row(
                    "SELECT path, dir, size, version FROM session_files WHERE session_id = ?1 AND path = ?2",
                    params![id, path],
                    file_row,
                )
                .optional()
                .map_err(err)
        })
    }

    fn file_chunk<'a>(
        &'a self,
        id: &'a str,
        path: &'a str,
        version: i64,
        seq: u64,
    ) -> BoxFuture<'a, Result<Option<Vec<u8>>, StoreError>> {
        let (id, path) = (id.to_string(), path.to_string());
        self.blocking(move |inner| {
            inner
                .reader()
                .query_row(
                    "SELECT c.bytes FROM session_file_chunks c
                     JOIN session_files f ON f.session_id = c.session_id AND f.path = c.path
                     WHERE c.session_id = ?1 AND c.path = ?2 AND f.version = ?3 AND c.seq = ?4",
                    params![id, path, version, to_i64(seq)],
                    |row| row.get(0),
                )
                .optional()
                .map_err(err)
        })
    }

    fn take_mount_bytes<'a>(
        &'a self,
        owner: &'a Owner,
        mount: &'a str,
        day_ms: i64,
        bytes: u64,
        limit: u64,
    ) -> BoxFuture<'a, Result<Option<u64>, StoreError>> {
        let (owner, mount) = (owner.clone(), mount.to_string());
        self.blocking(move |inner| {
            let mut writer = lock(&inner.writer);
            let tx = writer.transaction().map_err(err)?;
            let written: i64 = tx
                .query_row(
                    "SELECT coalesce((SELECT bytes FROM mount_writes
                       WHERE user = ?1 AND team = ?2 AND key = ?3 AND mount = ?4 AND day_ms = ?5), 0)",
                    params![owner.user, owner.team, owner.key, mount, day_ms],
                    |row| row.get(0),
                )
                .map_err(err)?;
            let written = written.max(0) as u64;
            if written.saturating_add(bytes) > limit {
                return Ok(Some(written));
            }
            tx.execute(
                "INSERT INTO mount_writes (user, team, key, mount, day_ms, bytes) VALUES (?1, ?2, ?3, ?4, ?5, ?6)
                 ON CONFLICT (user, team, key, mount, day_ms) DO UPDATE SET bytes = bytes + excluded.bytes",
                params![owner.user, owner.team, owner.key, mount, day_ms, to_i64(bytes)],
            )
            .map_err(err)?;
            tx.execute("DELETE FROM mount_writes WHERE day_ms < ?1", params![day_ms - 7 * 86_400_000]).map_err(err)?;
            tx.commit().map_err(err)?;
            Ok(None)
        })
    }

    fn create_console_session<'a>(&'a self, session: &'a ConsoleSession) -> BoxFuture<'a, Result<(), StoreError>> {
        let session = session.clone();
        self.blocking(move |inner| {
            let writer = lock(&inner.writer);
            writer
                .execute("DELETE FROM console_sessions WHERE expires_at_ms <= ?1", params![session.created_at_ms])
                .map_err(err)?;
            writer
                .execute(
                    "INSERT INTO console_sessions (id, subject, created_at_ms, expires_at_ms) VALUES (?1, ?2, ?3, ?4)",
                    params![session.id, session.subject, session.created_at_ms, session.expires_at_ms],
                )
                .map_err(err)?;
            Ok(())
        })
    }

    fn console_session<'a>(
        &'a self,
        id: &'a str,
        now_ms: i64,
    ) -> BoxFuture<'a, Result<Option<ConsoleSession>, StoreError>> {
        let id = id.to_string();
        self.blocking(move |inner| {
            inner
                .reader()
                .query_row(
                    "SELECT id, subject, created_at_ms, expires_at_ms FROM console_sessions
                     WHERE id = ?1 AND expires_at_ms > ?2 AND ended_at_ms IS NULL",
                    params![id, now_ms],
                    |row| {
                        Ok(ConsoleSession {
                            id: row.get(0)?,
                            subject: row.get(1)?,
                            created_at_ms: row.get(2)?,
                            expires_at_ms: row.get(3)?,
                        })
                    },
                )
                .optional()
                .map_err(err)
        })
    }

    fn end_console_session<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<(), StoreError>> {
        let id = id.to_string();
        self.blocking(move |inner| {
            lock(&inner.writer)
                .execute("UPDATE console_sessions SET ended_at_ms = ?2 WHERE id = ?1", params![id, now_ms()])
                .map_err(err)?;
            Ok(())
        })
    }

    fn create_handle<'a>(&'a self, handle: &'a HandleRecord) -> BoxFuture<'a, Result<(), StoreError>> {
        let handle = handle.clone();
        self.blocking(move |inner| {
            let writer = lock(&inner.writer);
            writer
                .execute("DELETE FROM execution_handles WHERE expires_at_ms <= ?1", params![handle.created_at_ms])
                .map_err(err)?;
            writer
                .execute(
                    &format!("INSERT INTO execution_handles ({HANDLE_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)"),
                    params![
                        handle.id,
                        handle.user,
                        handle.team,
                        handle.key,
                        handle.session_id,
                        handle.status.as_str(),
                        handle.created_at_ms,
                        handle.ended_at_ms,
                        handle.expires_at_ms,
                        handle.cancel_requested,
                        handle.body
                    ],
                )
                .map_err(err)?;
            Ok(())
        })
    }

    fn handle<'a>(&'a self, id: &'a str, now_ms: i64) -> BoxFuture<'a, Result<Option<HandleRecord>, StoreError>> {
        let id = id.to_string();
        self.blocking(move |inner| {
            let sql = format!("SELECT {HANDLE_COLUMNS} FROM execution_handles WHERE id = ?1 AND expires_at_ms > ?2");
            inner.reader().query_row(&sql, params![id, now_ms], handle_row).optional().map_err(err)
        })
    }

    fn finish_handle<'a>(&'a self, id: &'a str, end: &'a HandleEnd) -> BoxFuture<'a, Result<(), StoreError>> {
        let (id, end) = (id.to_string(), end.clone());
        self.blocking(move |inner| {
            lock(&inner.writer)
                .execute(
                    "UPDATE execution_handles SET status = ?2, body = ?3, ended_at_ms = ?4, expires_at_ms = ?5
                     WHERE id = ?1",
                    params![id, end.status.as_str(), end.body, end.ended_at_ms, end.expires_at_ms],
                )
                .map_err(err)?;
            Ok(())
        })
    }

    fn cancel_handle<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<bool, StoreError>> {
        let id = id.to_string();
        self.blocking(move |inner| {
            let changed = lock(&inner.writer)
                .execute(
                    "UPDATE execution_handles SET cancel_requested = 1 WHERE id = ?1 AND status = 'running'",
                    params![id],
                )
                .map_err(err)?;
            Ok(changed == 1)
        })
    }

    fn pause<'a>(
        &'a self,
        paused: &'a PausedRecord,
        approvals: &'a [ApprovalRecord],
        max_pending: u32,
    ) -> BoxFuture<'a, Result<bool, StoreError>> {
        let (paused, approvals) = (paused.clone(), approvals.to_vec());
        self.blocking(move |inner| {
            let mut writer = lock(&inner.writer);
            let tx = writer.transaction().map_err(err)?;
            let pending: i64 = tx
                .query_row(
                    "SELECT COUNT(*) FROM approvals WHERE user_name = ?1 AND status = 'pending' AND expires_at_ms > ?2",
                    params![paused.user, paused.paused_at_ms],
                    |row| row.get(0),
                )
                .map_err(err)?;
            if pending as u64 + approvals.len() as u64 > u64::from(max_pending) {
                return Ok(false);
            }
            tx.execute(
                &format!(
                    "INSERT OR REPLACE INTO paused_executions ({PAUSED_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, NULL)"
                ),
                params![
                    paused.id,
                    paused.user,
                    paused.team,
                    paused.key,
                    paused.context,
                    paused.state,
                    paused.memory,
                    paused.paused_at_ms
                ],
            )
            .map_err(err)?;
            for a in &approvals {
                tx.execute(
                    &format!(
                        "INSERT INTO approvals ({APPROVAL_COLUMNS})
                         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15)"
                    ),
                    params![
                        a.id,
                        a.execution_id,
                        a.call_id,
                        a.user,
                        a.team,
                        a.key,
                        a.tool,
                        a.args,
                        a.detail,
                        a.status.as_str(),
                        a.created_at_ms,
                        a.expires_at_ms,
                        a.decided_by,
                        a.decided_at_ms,
                        a.reason
                    ],
                )
                .map_err(err)?;
            }
            tx.commit().map_err(err)?;
            Ok(true)
        })
    }

    fn approval<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<Option<ApprovalRecord>, StoreError>> {
        let id = id.to_string();
        self.blocking(move |inner| {
            let sql = format!("SELECT {APPROVAL_COLUMNS} FROM approvals WHERE id = ?1");
            let row = inner.reader().query_row(&sql, params![id], approval_row).optional().map_err(err)?;
            row.transpose()
        })
    }

    fn approvals<'a>(&'a self, query: &'a ApprovalQuery) -> BoxFuture<'a, Result<Vec<ApprovalRecord>, StoreError>> {
        let query = query.clone();
        self.blocking(move |inner| {
            let sql = format!(
                "SELECT {APPROVAL_COLUMNS} FROM approvals
                 WHERE (?1 IS NULL OR status = ?1) AND (?2 IS NULL OR execution_id = ?2) AND created_at_ms >= ?3
                   AND expires_at_ms <= ?5
                 ORDER BY created_at_ms DESC, id DESC LIMIT ?4"
            );
            let rows = all(
                &inner.reader(),
                &sql,
                params![
                    query.status.map(ApprovalStatus::as_str),
                    query.execution_id,
                    query.since_ms.unwrap_or(0),
                    query.limit,
                    query.expired_by_ms.unwrap_or(i64::MAX)
                ],
                approval_row,
            )?;
            rows.into_iter().collect()
        })
    }

    fn decide_approval<'a>(
        &'a self,
        id: &'a str,
        decided: &'a Decided,
    ) -> BoxFuture<'a, Result<Option<ApprovalRecord>, StoreError>> {
        let (id, decided) = (id.to_string(), decided.clone());
        self.blocking(move |inner| {
            let sql = format!(
                "UPDATE approvals SET status = ?2, decided_by = ?3, reason = ?4, decided_at_ms = ?5
                 WHERE id = ?1 AND status = 'pending'
                   AND CASE WHEN ?2 = 'expired' THEN expires_at_ms <= ?5 ELSE expires_at_ms > ?5 END
                 RETURNING {APPROVAL_COLUMNS}"
            );
            let writer = lock(&inner.writer);
            let row = writer
                .query_row(
                    &sql,
                    params![id, decided.status.as_str(), decided.by, decided.reason, decided.at_ms],
                    approval_row,
                )
                .optional()
                .map_err(err)?;
            row.transpose()
        })
    }

    fn claim_paused<'a>(
        &'a self,
        id: &'a str,
        now_ms: i64,
        stale_before_ms: i64,
    ) -> BoxFuture<'a, Result<Option<PausedRecord>, StoreError>> {
        let id = id.to_string();
        self.blocking(move |inner| {
            let sql = format!(
                "UPDATE paused_executions SET claimed_at_ms = ?2
                 WHERE id = ?1 AND (claimed_at_ms IS NULL OR claimed_at_ms < ?3)
                 RETURNING {PAUSED_COLUMNS}"
            );
            lock(&inner.writer)
                .query_row(&sql, params![id, now_ms, stale_before_ms], paused_row)
                .optional()
                .map_err(err)
        })
    }

    fn release_paused<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<(), StoreError>> {
        let id = id.to_string();
        self.blocking(move |inner| {
            lock(&inner.writer)
                .execute("UPDATE paused_executions SET claimed_at_ms = NULL WHERE id = ?1", params![id])
                .map_err(err)?;
            Ok(())
        })
    }

    fn end_paused<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<(), StoreError>> {
        let id = id.to_string();
        self.blocking(move |inner| {
            lock(&inner.writer).execute("DELETE FROM paused_executions WHERE id = ?1", params![id]).map_err(err)?;
            Ok(())
        })
    }

    fn resumable<'a>(&'a self, stale_before_ms: i64) -> BoxFuture<'a, Result<Vec<String>, StoreError>> {
        self.blocking(move |inner| {
            all(
                &inner.reader(),
                "SELECT p.id FROM paused_executions p
                 WHERE (p.claimed_at_ms IS NULL OR p.claimed_at_ms < ?1)
                   AND NOT EXISTS (SELECT 1 FROM approvals a WHERE a.execution_id = p.id AND a.status = 'pending')
                 ORDER BY p.paused_at_ms LIMIT 100",
                params![stale_before_ms],
                |row| row.get(0),
            )
        })
    }

    fn ping(&self) -> BoxFuture<'_, Result<(), StoreError>> {
        self.blocking(|inner| inner.reader().query_row("SELECT 1", [], |_| Ok(())).map_err(err))
    }
}
