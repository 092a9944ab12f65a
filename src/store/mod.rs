//! Everything sandgate replicas share, behind one boundary: ledger records and usage
//! reports, budget reservations and spend, rate-limit windows, API keys, and
//! sessions (their records, memory images and workspace files).
//!
//! [`Store`] is that boundary. It has two implementations:
//! - [`sqlite::SqliteStore`], the embedded default: one file in WAL mode, served by the
//!   one process that opens it. Its budget and rate counters are kept beside the
//!   connection, in that process (spend is read back from the ledger on first use), so
//!   they cost no write on the hot path; a restart starts with no reservation in flight,
//!   which is exactly what a restarted process has.
//! - [`postgres::PgStore`], for several replicas on one PostgreSQL: reservations, spend
//!   counters and rate buckets are rows, changed by single atomic statements, so a
//!   budget or a rate limit holds across any number of replicas.
//!
//! Keys created with `sandgate key create` against a store live in it too; every
//! replica reads them again every few seconds (`service::KEY_REFRESH`), so a key
//! created or revoked on any machine is in force everywhere without a restart.
//! A session is a row, with the pages of its memory that differ from a fresh guest's
//! as rows beside it (see `sandbox::MemoryImage`): an execution takes a lease on it
//! (so one session runs one execution at a time, whichever replica serves it), reads
//! its pages unless the replica has them already, and returns the lease with the
//! pages the execution changed (of the pages it keeps already, only the changed
//! bytes, as a [`patch`]). A lease a dead replica never returned ends at its
//! deadline. A session's workspace files are rows beside it too, changed only by
//! whoever holds the lease and in the same transaction as the pages, so memory and
//! files move together.
//!
//! Nothing outside this module opens a database. Records go in through [`Ledger`], which
//! commits them in batches (group commit); reservations are released by a
//! [`Record::Release`] (or, for calls drawn from a lease of headroom, reduced by a
//! [`Record::Draw`]) committed in the same batch as the model call that spent them,
//! so the spend and the release land together and a budget is never briefly free.

mod activity;
pub mod approvals;
mod ledger;
pub mod patch;
pub mod postgres;
pub mod sqlite;
mod usage;

use futures::future::BoxFuture;
use serde::Serialize;

pub use activity::{CallRow, CallStats, ExecutionDetail, ExecutionQuery, LogRow, ModelCallRow, PulseRows};
pub use approvals::{ApprovalQuery, ApprovalRecord, ApprovalStatus, Decided, PausedRecord};
pub use ledger::Ledger;
pub use usage::{parse_time as usage_time, total, GroupBy, UsageQuery, UsageRow};

/// One execution: what the ledger writes, and what reading it back gives (with its
/// console lines apart: `logs` is empty in a listing).
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
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
    /// Its console lines as a JSON array of `{level, message}` (cut to
    /// [`MAX_LOG_BYTES`]); empty when it printed none, and then nothing is stored.
    pub logs: String,
    /// The coding agent's own session it belongs to (its id, as the agent sent it).
    pub agent_session: Option<String>,
}

/// The most bytes of console lines kept with an execution's record.
pub const MAX_LOG_BYTES: usize = 16 * 1024;

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
    /// The coding agent's own session it belongs to.
    pub agent_session: Option<String>,
}

impl ModelCallRecord {
    /// The cost in integer nano-dollars, the unit budgets and totals are kept in.
    pub fn cost_nanos(&self) -> i64 {
        (self.cost_usd * 1e9).round() as i64
    }
}

/// Whose spend to total: one user's, or one team's.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum SpendScope {
    User(String),
    Team(String),
}

impl SpendScope {
    /// `user` or `team`, and the name.
    pub fn parts(&self) -> (&'static str, &str) {
        match self {
            Self::User(user) => ("user", user),
            Self::Team(team) => ("team", team),
        }
    }

    /// Whether a model call by `user` of `team` counts against this scope.
    pub fn covers(&self, user: &str, team: &str) -> bool {
        match self {
            Self::User(u) => u == user,
            Self::Team(t) => t == team,
        }
    }
}

impl std::fmt::Display for SpendScope {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::User(user) => write!(f, "user `{user}`"),
            Self::Team(team) => write!(f, "team `{team}`"),
        }
    }
}

/// Something that happened to a session, attributed to its owner: `opened`, `saved`
/// (an execution's state was kept: `state_bytes` is its size), `files_written`
/// (`state_bytes` file bytes were written: by an execution to its workspace and
/// writable mounts, or by a client's upload; the session id is empty for an execution
/// outside a session that wrote to a mount) or `ended`.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct SessionEvent {
    pub session_id: String,
    pub user: String,
    pub team: String,
    pub key: String,
    pub at_ms: i64,
    pub event: &'static str,
    pub state_bytes: u64,
}

/// Anything the ledger stores.
#[derive(Clone, Debug, PartialEq)]
pub enum Record {
    Execution(ExecutionRecord),
    Call(CallRecord),
    Model(ModelCallRecord),
    Session(SessionEvent),
    /// Ends the budget reservation with this id. Committed after (or with) the model
    /// call that spent it, so that the spend is counted before the hold goes.
    Release(String),
    /// Takes `nanos` and `tokens` off the reservation `hold`, which goes once nothing is
    /// left of it: a call drawn from a replica's lease of budget headroom ends this
    /// way (committed with its record, as a release is), and so does the lease's
    /// unused rest when the replica gives it back.
    Draw {
        hold: String,
        nanos: i64,
        tokens: u64,
    },
}

/// One budget counter a reservation is held against: a scope's model-call spend since
/// the start of a period, with the limits that apply to it.
#[derive(Clone, Debug, PartialEq)]
pub struct BudgetLine {
    pub scope: SpendScope,
    /// Start of the period (UTC day or month), Unix milliseconds.
    pub since_ms: i64,
    pub limit_nanos: Option<i64>,
    pub limit_tokens: Option<u64>,
}

/// What a reservation asks for: `nanos` and `tokens` against every line, all or none.
#[derive(Clone, Debug, PartialEq)]
pub struct Hold {
    /// Unique; the [`Record::Release`] that ends the reservation names it.
    pub id: String,
    pub lines: Vec<BudgetLine>,
    pub nanos: i64,
    pub tokens: u64,
    /// After this (Unix milliseconds) a reservation never released (its replica died)
    /// stops counting.
    pub expires_at_ms: i64,
}

/// Spend plus reservations in flight on one line.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Balance {
    pub used_nanos: i64,
    pub used_tokens: u64,
}

/// A hold refused: the first line (in the hold's order) it would have passed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Overdrawn {
    pub line: usize,
    /// The token limit refused it (else the USD limit).
    pub tokens: bool,
    pub balance: Balance,
}

/// An API key kept in the store (`sandgate key create` with a shared store): only its
/// hash, as in the configuration file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredKey {
    pub entry: crate::auth::KeyEntry,
    pub created_at_ms: i64,
}

/// What [`Store::create_key`] came to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyCreated {
    Created,
    /// A key, live or revoked, has the name.
    NameTaken,
    /// The owner holds as many live keys as the limit allows.
    OwnerFull,
}

/// A key's teams as the store keeps them: a JSON array, or `NULL` for a key whose
/// only team is its `team`.
fn teams_column(entry: &crate::auth::KeyEntry) -> Option<String> {
    (entry.teams.len() > 1 || entry.teams.first() != Some(&entry.team))
        .then(|| serde_json::to_string(&entry.teams).expect("strings serialise"))
}

/// The teams of a stored key, from its `team` and `teams` columns.
fn parse_teams(name: &str, team: &str, column: Option<String>) -> Result<Vec<String>, StoreError> {
    match column {
        None => Ok(vec![team.to_string()]),
        Some(json) => {
            serde_json::from_str(&json).map_err(|e| StoreError(format!("key `{name}` has malformed teams: {e}")))
        }
    }
}

/// Whose something is: the whole principal that made it (user, team and key), which
/// alone may use it. Another key of the same user is someone else.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Owner {
    pub user: String,
    pub team: String,
    pub key: String,
}

impl Owner {
    pub fn of(principal: &crate::auth::Principal) -> Self {
        Self { user: principal.user.clone(), team: principal.team.clone(), key: principal.key.clone() }
    }

    /// Whether `principal` is this owner.
    pub fn is(&self, principal: &crate::auth::Principal) -> bool {
        self.user == principal.user && self.team == principal.team && self.key == principal.key
    }
}

/// A session as the store keeps it, its image apart.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SessionRecord {
    pub id: String,
    /// The principal that created it, and the only one that may use it.
    pub user: String,
    pub team: String,
    pub key: String,
    pub language: crate::request::Language,
    pub created_at_ms: i64,
    /// The end of its last execution (its creation, before any).
    pub used_at_ms: i64,
    /// How long it lives unused.
    pub ttl_ms: i64,
    /// Executions that ran in it. Its memory changes only with an execution's return,
    /// which counts one more, so this also tells a replica whether the memory it
    /// kept from the session's last execution here is still the session's.
    pub executions: u64,
    /// Bytes of its kept memory pages (0: none yet).
    pub image_bytes: u64,
    /// Files and directories in its workspace.
    pub files: u64,
    /// Bytes of the files in its workspace.
    pub file_bytes: u64,
}

/// One entry of a session's workspace as the store keeps it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredFile {
    /// Relative, `/`-separated, no `.` or `..` parts.
    pub path: String,
    /// A directory (no bytes) rather than a file.
    pub dir: bool,
    /// The file's length.
    pub size: u64,
    /// Which writing of the file this is: every write gives a file a new version, so
    /// a reader going through its chunks one at a time ([`Store::file_chunk`]) finds
    /// out when the file changed under it.
    pub version: i64,
    /// The file's bytes, when they were asked for.
    pub data: Vec<u8>,
}

impl StoredFile {
    pub fn file(path: String, data: Vec<u8>) -> Self {
        Self { path, dir: false, size: data.len() as u64, version: 0, data }
    }

    pub fn dir(path: String) -> Self {
        Self { path, dir: true, size: 0, version: 0, data: Vec::new() }
    }

    /// How many [`FILE_CHUNK`]s its bytes take.
    pub fn chunks(&self) -> u64 {
        self.size.div_ceil(FILE_CHUNK as u64)
    }
}

/// Bytes of one row of a file's contents: files are kept, written and read this
/// much at a time, so no request ever holds more than a chunk of a file.
pub const FILE_CHUNK: usize = 1 << 20;

/// A change to a session's workspace, applied with the lease's return.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FileChange {
    /// Writes a file or makes a directory at `path`, replacing what was there.
    Put(StoredFile),
    /// Writes the file at `path` from the local file `from` (an upload spooled to
    /// disk), `size` bytes, read a chunk at a time.
    Spooled { path: String, size: u64, from: std::path::PathBuf },
    /// Removes `path` and everything under it.
    Remove(String),
}

impl FileChange {
    /// Bytes a `Put` writes.
    pub fn bytes(&self) -> u64 {
        match self {
            Self::Put(file) => file.size,
            Self::Spooled { size, .. } => *size,
            Self::Remove(_) => 0,
        }
    }
}

/// A new file version (see [`StoredFile::version`]).
pub(crate) fn new_version() -> i64 {
    let mut bytes = [0u8; 8];
    let _ = getrandom::fill(&mut bytes);
    i64::from_le_bytes(bytes)
}

/// The chunks of a spooled upload, read one at a time.
pub(crate) fn spooled_chunks(
    from: &std::path::Path,
    size: u64,
) -> Result<impl Iterator<Item = Result<Vec<u8>, StoreError>>, StoreError> {
    use std::io::Read;
    let mut file =
        std::fs::File::open(from).map_err(|e| StoreError(format!("cannot read the upload's spool file: {e}")))?;
    let mut left = size;
    Ok(std::iter::from_fn(move || {
        if left == 0 {
            return None;
        }
        let take = left.min(FILE_CHUNK as u64) as usize;
        left -= take as u64;
        let mut chunk = vec![0u8; take];
        Some(
            file.read_exact(&mut chunk).map(|()| chunk).map_err(|e| StoreError(format!("cannot read the upload: {e}"))),
        )
    }))
}

/// A signed-in console browser, kept in the store so that any replica knows it and
/// a sign-out ends it everywhere.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConsoleSession {
    /// The SHA-256 (hex) of the random secret the browser's cookie carries.
    pub id: String,
    /// Who signed in: `key:` and the hex SHA-256 of the API key they presented (so a
    /// new key that takes an old key's name is someone else).
    pub subject: String,
    pub created_at_ms: i64,
    pub expires_at_ms: i64,
}

/// Caps a session's return checks inside its transaction, against every session of
/// the same user, so that concurrent returns cannot pass them together.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MemoryCap {
    pub user: String,
    /// Bytes of kept memory all of `user`'s live sessions may hold.
    pub max_bytes: u64,
}

/// What returning a session did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Returned {
    /// It is back, with what the return carried.
    Done,
    /// The lease no longer held it: nothing changed.
    NotHeld,
    /// The memory would have brought its user's sessions to `total` bytes, past their
    /// cap: it is back unchanged (no pages, no files, not counted as used).
    OverCap { total: u64 },
}

impl SessionRecord {
    /// Whether `principal` opened it (and so may use it).
    pub fn owned_by(&self, principal: &crate::auth::Principal) -> bool {
        self.user == principal.user && self.team == principal.team && self.key == principal.key
    }

    /// When it ends unless it is used before.
    pub fn expires_at_ms(&self) -> i64 {
        self.used_at_ms.saturating_add(self.ttl_ms)
    }
}

/// Where a background execution stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum HandleStatus {
    Running,
    /// Stopped at calls waiting for approval: it holds no instance and goes on, on
    /// any replica, once they are decided.
    Paused,
    Succeeded,
    Failed,
    Cancelled,
}

impl HandleStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Running => "running",
            Self::Paused => "paused",
            Self::Succeeded => "succeeded",
            Self::Failed => "failed",
            Self::Cancelled => "cancelled",
        }
    }

    /// The status a store row names.
    pub fn parse(text: &str) -> Result<Self, StoreError> {
        match text {
            "running" => Ok(Self::Running),
            "paused" => Ok(Self::Paused),
            "succeeded" => Ok(Self::Succeeded),
            "failed" => Ok(Self::Failed),
            "cancelled" => Ok(Self::Cancelled),
            other => Err(StoreError(format!("a background execution has an unknown status `{other}`"))),
        }
    }
}

/// An execution started in the background (`POST /v1/executions`): its status, and
/// its result once it ended, kept until `expires_at_ms`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HandleRecord {
    /// The execution's id (the ledger's `executions.id` once it is recorded).
    pub id: String,
    pub user: String,
    pub team: String,
    pub key: String,
    pub session_id: Option<String>,
    /// `running`, then `succeeded`, `failed` or `cancelled`.
    pub status: HandleStatus,
    pub created_at_ms: i64,
    pub ended_at_ms: Option<i64>,
    /// When it is forgotten: its result's TTL after it ended (while it runs: the end
    /// of its longest possible run plus that TTL, so a replica's death cannot leave it
    /// forever).
    pub expires_at_ms: i64,
    /// Someone asked to cancel it (on whichever replica); the replica running it
    /// cancels it.
    pub cancel_requested: bool,
    /// The result body (`POST /v1/execute`'s JSON) once it ended.
    pub body: Option<String>,
}

impl HandleRecord {
    /// Whether `principal` started it (and so may see, follow and cancel it).
    pub fn owned_by(&self, principal: &crate::auth::Principal) -> bool {
        self.user == principal.user && self.team == principal.team && self.key == principal.key
    }
}

/// How a background execution ended: its status and result body, kept until
/// `expires_at_ms`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HandleEnd {
    pub status: HandleStatus,
    pub body: String,
    pub ended_at_ms: i64,
    pub expires_at_ms: i64,
}

/// Pages of a session's memory to keep, written over those the store has.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MemoryWrite<'a> {
    /// The memory's size in bytes.
    pub size: u64,
    /// Each page's index and its [`PAGE`] bytes.
    pub pages: Vec<(u32, &'a [u8])>,
    /// The bytes changed in other pages the store keeps already ([`patch`]'s format).
    pub patch: &'a [u8],
    /// Bytes of the session's kept pages once these are written (the caller knows
    /// which are new): what the byte caps count.
    pub bytes: u64,
    /// The cap to check inside the return's transaction (when the session's state
    /// grows).
    pub cap: Option<MemoryCap>,
}

/// A session given back in the ledger's transaction, with the records of the
/// execution that held it ([`Store::append`]): one commit for both. It carries no
/// byte cap: a return the cap could refuse changes its execution's outcome, so such
/// a return is made on its own first ([`Store::return_session`]).
#[derive(Clone, Debug)]
pub struct Giveback {
    pub id: String,
    pub lease: String,
    /// The pages the execution wrote, when it succeeded.
    pub memory: Option<KeptMemory>,
    /// When the execution ended: the session's last use.
    pub ran_at_ms: i64,
    /// Changes to its workspace, applied in order.
    pub files: Vec<FileChange>,
    /// Appended with the batch when the session was given back.
    pub if_returned: Vec<Record>,
    /// Appended instead when it was not (the lease no longer held it, or the
    /// return failed).
    pub otherwise: Vec<Record>,
}

impl Giveback {
    /// The records it appends to its batch, given what its return did: `if_returned`
    /// when the session was given back, `otherwise` when not.
    pub fn records_after(&self, answer: &Result<Returned, StoreError>) -> &[Record] {
        if matches!(answer, Ok(Returned::Done)) {
            &self.if_returned
        } else {
            &self.otherwise
        }
    }
}

/// Pages of a session's memory a [`Giveback`] keeps, written over those the store
/// has.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeptMemory {
    /// The memory's size in bytes.
    pub size: u64,
    /// Each page's index and its [`PAGE`] bytes.
    pub pages: Vec<(u32, Vec<u8>)>,
    /// The bytes changed in other pages the store keeps already ([`patch`]'s format).
    pub patch: Vec<u8>,
    /// Bytes of the session's kept pages once these are written.
    pub bytes: u64,
}

impl KeptMemory {
    /// These pages as a return writes them, checked against `cap` when given.
    pub fn write(&self, cap: Option<MemoryCap>) -> MemoryWrite<'_> {
        let pages = self.pages.iter().map(|(page, bytes)| (*page, &bytes[..])).collect();
        MemoryWrite { size: self.size, pages, patch: &self.patch, bytes: self.bytes, cap }
    }
}

impl From<&MemoryWrite<'_>> for KeptMemory {
    /// A copy of `write`'s pages, to outlive it (its cap is not kept).
    fn from(write: &MemoryWrite<'_>) -> Self {
        let pages = write.pages.iter().map(|(page, bytes)| (*page, bytes.to_vec())).collect();
        Self { size: write.size, pages, patch: write.patch.to_vec(), bytes: write.bytes }
    }
}

/// A session's memory as the store keeps it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StoredMemory {
    /// The memory's size in bytes (0 before the session's first successful
    /// execution).
    pub size: u64,
    /// Its kept pages, by increasing index: each one's index and [`PAGE`] bytes.
    pub pages: Vec<(u32, Vec<u8>)>,
}

/// Bytes of a memory page as sessions keep them.
pub const PAGE: usize = 4096;

/// A session image as sandgate stored it before memories were kept page by page:
/// `SGMI`, version 1, the memory's size (u64), the page count (u32), then each page's
/// index (u32) and bytes, little-endian. `None` when it is not one.
pub(crate) fn legacy_image(bytes: &[u8]) -> Option<StoredMemory> {
    let header = bytes.get(..20)?;
    if &header[..4] != b"SGMI" || header[4..8] != 1u32.to_le_bytes() {
        return None;
    }
    let size = u64::from_le_bytes(header[8..16].try_into().ok()?);
    let count = u32::from_le_bytes(header[16..20].try_into().ok()?) as usize;
    let entries = &bytes[20..];
    if entries.len() != count.checked_mul(4 + PAGE)? {
        return None;
    }
    let pages = entries
        .chunks_exact(4 + PAGE)
        .map(|entry| (u32::from_le_bytes(entry[..4].try_into().expect("four bytes")), entry[4..].to_vec()))
        .collect();
    Some(StoredMemory { size, pages })
}

/// What taking a session for an execution found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Lease {
    /// Taken until the lease's deadline (its memory is read apart:
    /// [`Store::session_memory`]).
    Taken { session: SessionRecord },
    /// Another execution holds it, until `until_ms` at the latest.
    Busy { until_ms: i64 },
    /// No live session has that id.
    Missing,
}

/// The store failed or could not be reached. Callers answer 503: the request can be
/// retried, and nothing was recorded as done.
#[derive(Clone, Debug, thiserror::Error)]
#[error("store: {0}")]
pub struct StoreError(pub String);

impl StoreError {
    pub(crate) fn from(e: impl std::fmt::Display) -> Self {
        Self(e.to_string())
    }
}

/// The storage boundary: what every replica must agree on.
pub trait Store: Send + Sync + 'static {
    /// Appends `records` atomically (all or none), releasing the reservations named by
    /// [`Record::Release`], taking [`Record::Draw`]s off theirs, and adding each model
    /// call's cost to the spend counters it falls under. In the same transaction it
    /// gives back each of `returns` as [`Store::return_session`] would, each with its
    /// own records: what each return did, in order (a return that failed changed
    /// nothing and appends its `otherwise` records; the batch still commits).
    fn append(
        &self,
        records: Vec<Record>,
        returns: Vec<Giveback>,
    ) -> BoxFuture<'_, Result<Vec<Result<Returned, StoreError>>, StoreError>>;

    /// Totals per group for `query`.
    fn usage<'a>(&'a self, query: &'a UsageQuery) -> BoxFuture<'a, Result<Vec<UsageRow>, StoreError>>;

    /// The latest executions `query` selects, newest first.
    fn executions<'a>(&'a self, query: &'a ExecutionQuery) -> BoxFuture<'a, Result<Vec<ExecutionRecord>, StoreError>>;

    /// Executions in `query`'s window and user counted per minute and outcome, and
    /// the wall times of the latest `query.limit` of them (its outcome is not used).
    fn pulse<'a>(&'a self, query: &'a ExecutionQuery) -> BoxFuture<'a, Result<PulseRows, StoreError>>;

    /// One execution with its host calls and model calls.
    fn execution<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<Option<ExecutionDetail>, StoreError>>;

    /// Host calls per name over `query`'s window and user (its outcome and limit are
    /// not used).
    fn call_stats<'a>(&'a self, query: &'a ExecutionQuery) -> BoxFuture<'a, Result<Vec<CallStats>, StoreError>>;

    /// The latest model calls in `query`'s window and user, newest first, at most its
    /// limit (its outcome is not used).
    fn model_calls<'a>(&'a self, query: &'a ExecutionQuery) -> BoxFuture<'a, Result<Vec<ModelCallRow>, StoreError>>;

    /// Reserves `hold` against every line, atomically with every other reservation on
    /// any replica: `None` when held, else the line it would pass (nothing held).
    fn reserve<'a>(&'a self, hold: &'a Hold) -> BoxFuture<'a, Result<Option<Overdrawn>, StoreError>>;

    /// Spend plus live reservations on each line, in order.
    fn balances<'a>(&'a self, lines: &'a [BudgetLine]) -> BoxFuture<'a, Result<Vec<Balance>, StoreError>>;

    /// Takes one token from the bucket of `subject` doing `action`, which holds
    /// `per_minute` and refills continuously at that rate. `Err` holds the seconds
    /// until a token is free.
    fn take<'a>(
        &'a self,
        subject: &'a str,
        action: &'static str,
        per_minute: u32,
    ) -> BoxFuture<'a, Result<Result<(), u64>, StoreError>>;

    /// Adds `key`, unless a key, live or revoked, already has its name (a revoked
    /// key's name stays reserved, so nothing that named the old key, a console sign-in
    /// or a usage report, can ever mean the new one), or, with `owner_limit`, its owner
    /// already holds that many live keys. The count and the insert are one step on
    /// every replica, so two requests at once cannot pass the limit together.
    fn create_key<'a>(
        &'a self,
        key: &'a StoredKey,
        owner_limit: Option<u32>,
    ) -> BoxFuture<'a, Result<KeyCreated, StoreError>>;

    /// Whether any key, live or revoked, has ever had the name `name`.
    fn key_name_used<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<bool, StoreError>>;

    /// Revokes the live key named `name`; `false` when there is none.
    fn revoke_key<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<bool, StoreError>>;

    /// The live keys (neither revoked nor expired), by name.
    fn keys(&self) -> BoxFuture<'_, Result<Vec<StoredKey>, StoreError>>;

    /// Adds a new session.
    fn create_session<'a>(&'a self, session: &'a SessionRecord) -> BoxFuture<'a, Result<(), StoreError>>;

    /// The live session `id` (not expired at `now_ms`).
    fn session<'a>(&'a self, id: &'a str, now_ms: i64) -> BoxFuture<'a, Result<Option<SessionRecord>, StoreError>>;

    /// `user`'s live sessions, oldest first.
    fn sessions<'a>(&'a self, user: &'a str, now_ms: i64) -> BoxFuture<'a, Result<Vec<SessionRecord>, StoreError>>;

    /// How many live sessions `user` has, and the bytes of their images: what the
    /// policy caps are checked against, without reading every session.
    fn session_totals<'a>(&'a self, user: &'a str, now_ms: i64) -> BoxFuture<'a, Result<(u64, u64), StoreError>>;

    /// Ends session `id`, memory and all; `false` when there is none.
    fn end_session<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<bool, StoreError>>;

    /// Takes live session `id` of `owner` for one execution, as `lease`, until
    /// `until_ms`. Another principal's session is [`Lease::Missing`], busy or not.
    fn lease_session<'a>(
        &'a self,
        id: &'a str,
        owner: &'a Owner,
        lease: &'a str,
        until_ms: i64,
        now_ms: i64,
    ) -> BoxFuture<'a, Result<Lease, StoreError>>;

    /// Session `id`'s memory: its size and kept pages.
    fn session_memory<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<StoredMemory, StoreError>>;

    /// Gives session `id` back: after an execution that ended at `ran_at_ms` (counted
    /// as the session's last use), with the `memory` pages it wrote (none when the
    /// execution failed, which leaves the session as it was); with `ran_at_ms` `None`
    /// when no execution ran (it was refused before starting). `files` are applied in
    /// order, in the same transaction. [`Returned::NotHeld`] (nothing changed) when
    /// `lease` no longer holds it; [`Returned::OverCap`] when the memory's cap refused
    /// it.
    fn return_session<'a>(
        &'a self,
        id: &'a str,
        lease: &'a str,
        memory: Option<&'a MemoryWrite<'a>>,
        ran_at_ms: Option<i64>,
        files: &'a [FileChange],
    ) -> BoxFuture<'a, Result<Returned, StoreError>>;

    /// Session `id`'s workspace, by path; with each file's bytes when `data`.
    fn session_files<'a>(&'a self, id: &'a str, data: bool) -> BoxFuture<'a, Result<Vec<StoredFile>, StoreError>>;

    /// One entry of session `id`'s workspace, without its bytes (read them a chunk
    /// at a time with [`Store::file_chunk`]).
    fn session_file<'a>(&'a self, id: &'a str, path: &'a str) -> BoxFuture<'a, Result<Option<StoredFile>, StoreError>>;

    /// Chunk `seq` of the file at `path` in session `id`, as long as the file is still
    /// at `version`: `None` when it changed (or went) since.
    fn file_chunk<'a>(
        &'a self,
        id: &'a str,
        path: &'a str,
        version: i64,
        seq: u64,
    ) -> BoxFuture<'a, Result<Option<Vec<u8>>, StoreError>>;

    /// Adds `bytes` to what `owner` wrote to the mounted host directory `mount` on the
    /// UTC day that starts at `day_ms`, if that stays within `limit`: `None` when added,
    /// else what was written that day already (nothing added). Atomic across replicas.
    fn take_mount_bytes<'a>(
        &'a self,
        owner: &'a Owner,
        mount: &'a str,
        day_ms: i64,
        bytes: u64,
        limit: u64,
    ) -> BoxFuture<'a, Result<Option<u64>, StoreError>>;

    /// Adds a signed-in console browser (and forgets those whose time is over).
    fn create_console_session<'a>(&'a self, session: &'a ConsoleSession) -> BoxFuture<'a, Result<(), StoreError>>;

    /// The console browser `id`, unless it signed out or its time is over at `now_ms`.
    fn console_session<'a>(
        &'a self,
        id: &'a str,
        now_ms: i64,
    ) -> BoxFuture<'a, Result<Option<ConsoleSession>, StoreError>>;

    /// Signs console browser `id` out, on every replica.
    fn end_console_session<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<(), StoreError>>;

    /// Adds a background execution (and forgets those whose time is over).
    fn create_handle<'a>(&'a self, handle: &'a HandleRecord) -> BoxFuture<'a, Result<(), StoreError>>;

    /// Background execution `id`, unless it is forgotten by `now_ms`.
    fn handle<'a>(&'a self, id: &'a str, now_ms: i64) -> BoxFuture<'a, Result<Option<HandleRecord>, StoreError>>;

    /// Records the end of background execution `id`.
    fn finish_handle<'a>(&'a self, id: &'a str, end: &'a HandleEnd) -> BoxFuture<'a, Result<(), StoreError>>;

    /// Asks for background execution `id` to be cancelled; `false` when it is not
    /// running.
    fn cancel_handle<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<bool, StoreError>>;

    /// Keeps `paused` (replacing a row of the same execution) and adds `approvals`,
    /// atomically, unless that would give the paused execution's user more than
    /// `max_pending` pending approvals: then nothing is written and the answer is
    /// false.
    fn pause<'a>(
        &'a self,
        paused: &'a PausedRecord,
        approvals: &'a [ApprovalRecord],
        max_pending: u32,
    ) -> BoxFuture<'a, Result<bool, StoreError>>;

    /// Approval `id`.
    fn approval<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<Option<ApprovalRecord>, StoreError>>;

    /// The approvals `query` selects, newest first.
    fn approvals<'a>(&'a self, query: &'a ApprovalQuery) -> BoxFuture<'a, Result<Vec<ApprovalRecord>, StoreError>>;

    /// Decides approval `id` if it is pending (and, to approve or deny it, not yet
    /// expired; to expire it, past its expiry): the approval as decided, or `None`
    /// when it was not there to decide (decided already, or expired).
    fn decide_approval<'a>(
        &'a self,
        id: &'a str,
        decided: &'a Decided,
    ) -> BoxFuture<'a, Result<Option<ApprovalRecord>, StoreError>>;

    /// Paused execution `id`, claimed for resuming now if no replica holds it (a
    /// claim made before `stale_before_ms` no longer holds); `None` when it is not
    /// paused, or claimed.
    fn claim_paused<'a>(
        &'a self,
        id: &'a str,
        now_ms: i64,
        stale_before_ms: i64,
    ) -> BoxFuture<'a, Result<Option<PausedRecord>, StoreError>>;

    /// Gives up the claim on paused execution `id` (it could not be resumed now).
    fn release_paused<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<(), StoreError>>;

    /// Forgets paused execution `id`: it ended.
    fn end_paused<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<(), StoreError>>;

    /// Paused executions none of whose approvals is pending, not claimed (or claimed
    /// before `stale_before_ms`): those a replica should resume.
    fn resumable<'a>(&'a self, stale_before_ms: i64) -> BoxFuture<'a, Result<Vec<String>, StoreError>>;

    /// Answers when the store can serve (the readiness check).
    fn ping(&self) -> BoxFuture<'_, Result<(), StoreError>>;
}

/// Where the store lives.
#[derive(Clone, Debug, PartialEq)]
pub enum StoreConfig {
    Sqlite { path: std::path::PathBuf, synchronous: sqlite::Synchronous },
    Postgres { url: String, pool: usize },
}

/// Opens (creating and migrating as needed) the store `config` names.
pub async fn open(config: &StoreConfig) -> Result<std::sync::Arc<dyn Store>, StoreError> {
    Ok(match config {
        StoreConfig::Sqlite { path, synchronous } => {
            let (path, synchronous) = (path.clone(), *synchronous);
            let store = tokio::task::spawn_blocking(move || sqlite::SqliteStore::open(&path, synchronous))
                .await
                .map_err(StoreError::from)??;
            std::sync::Arc::new(store)
        }
        StoreConfig::Postgres { url, pool } => std::sync::Arc::new(postgres::PgStore::connect(url, *pool).await?),
    })
}

pub use crate::time::now_ms;

/// The language a stored session names.
pub(crate) fn parse_language(text: &str) -> Result<crate::request::Language, StoreError> {
    text.parse().map_err(|why| StoreError(format!("a stored session has {why}")))
}

/// Seconds until one token is back in a bucket holding `tokens` that refills at
/// `per_minute`.
/// A role as stored: `admin` or `member`.
pub(crate) fn parse_role(text: &str) -> Result<crate::auth::Role, StoreError> {
    match text {
        "admin" => Ok(crate::auth::Role::Admin),
        "member" => Ok(crate::auth::Role::Member),
        other => Err(StoreError(format!("a stored key has an unknown role `{other}`"))),
    }
}

pub(crate) fn retry_after_secs(tokens: f64, per_minute: u32) -> u64 {
    let per_second = per_minute as f64 / 60.0;
    ((1.0 - tokens) / per_second).ceil().max(1.0) as u64
}
