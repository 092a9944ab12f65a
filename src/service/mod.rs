//! The one path every surface takes: authenticate, authorise by policy, rate-limit,
//! run in the sandbox, record in the ledger. HTTP handlers and the CLI call these
//! functions and only translate inputs and outputs.
//!
//! # Whatever the caller does
//!
//! An execution runs as a task of its own; [`Service::run`] only awaits it. If that
//! future is dropped (the HTTP client hung up, the SSE stream closed, the MCP request
//! was cancelled), the execution is cancelled at once and still recorded, with the
//! outcome `cancelled`, the resources it used and every host call it made. At
//! shutdown, executions get the grace period to finish and are then cancelled the
//! same way. Either way nothing started escapes the ledger.

mod activity;
pub mod approvals;
pub use activity::{BudgetStanding, MAX_LISTED};
pub mod admin;
pub mod fds;
mod handles;
pub mod keys;
mod memories;
mod reload;
pub mod rerank;
mod sessions;
pub mod shares;
mod signin;

use std::sync::{Arc, RwLock};
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use crate::store::HandleStatus;
pub use handles::{Event as HandleEvent, Following, HandleView, CANCEL_POLL};
pub use reload::Policies;
pub use sessions::{BodyError, Download, FileRead, SessionView};
pub use shares::{Shares, Slot};

use crate::auth::{KeyEntry, KeyRing, Principal};
use crate::config::Config;
use crate::error::Kind;
use crate::limits::Limits;
use crate::mcp::{Catalog, Upstreams};
use crate::model::{Answer, CallContext, Format, Gateway, ModelError};
use crate::policy::{Capabilities, LoadContext, PolicyError};
use crate::request::ExecuteRequest;
use crate::sandbox::{Admission, Counter, Doors, Job, LineSender, Sandbox};
use crate::sessions::workspace::{Files, MountWrites, SessionFiles};
use crate::sessions::{Scratch, Workspace};
use crate::store::{CallRecord, ExecutionRecord, Ledger, Record, StoreError};
use crate::telemetry::{trace, InFlight};

/// What adapters speak of, re-exported so that they name the service, never the
/// sandbox.
pub use crate::sandbox::{LogLevel, LogLine, Outcome, Rejected, LINE_BUFFER};

/// Why a request was not served.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    /// No credential, a key that is not configured, or a token that does not verify
    /// (the reason).
    #[error("{0}")]
    Unauthorized(String),
    /// The principal's policies do not allow this.
    #[error("{0}")]
    Forbidden(String),
    /// A rate limit from the principal's policies; retry after the given seconds.
    #[error("rate limit of {per_minute} {what} per minute reached; retry in {retry_after_secs} s")]
    RateLimited { what: &'static str, per_minute: u32, retry_after_secs: u64 },
    /// The principal holds as many of something as one principal may at once.
    #[error("at most {limit} {what} at once per caller; retry when one ends")]
    AtOnce { what: &'static str, limit: u32 },
    /// The principal already has as many executions as its policies allow at once.
    #[error(
        "user `{user}` already has {limit} executions running, the most their policies allow at once \
         (limits.concurrent); retry when one ends"
    )]
    TooManyRunning { user: String, limit: u32 },
    #[error(transparent)]
    Rejected(#[from] Rejected),
    /// The store could not be reached, so nothing is acknowledged: a rate limit could
    /// not be checked, or an execution ran but its record could not be committed.
    #[error("the store is unavailable; retry: {0}")]
    Store(#[from] StoreError),
    /// Nothing the caller may see has that name (another principal's session reads
    /// the same as none).
    #[error("{0}")]
    NotFound(String),
    /// What the request would change is no longer there to change (an approval
    /// decided already, or expired).
    #[error("{0}")]
    Conflict(String),
    /// The session is running another execution; retry when it ends.
    #[error("session `{0}` is running another execution; its executions run one at a time")]
    SessionBusy(String),
    /// The person holds as many live personal keys as their policies allow.
    #[error(
        "user `{user}` already holds {limit} live personal keys, the most their policies allow (keys.max); revoke one \
         first"
    )]
    TooManyKeys { user: String, limit: u32 },
    /// The principal keeps as many sessions as its policies allow.
    #[error("user `{user}` already has {limit} sessions, the most their policies allow (sessions.max); end one first")]
    TooManySessions { user: String, limit: u32 },
    /// The request asks for something it may not have.
    #[error("{0}")]
    Invalid(String),
    /// A file request the workspace refuses (over a quota, a file where a directory
    /// must be); the message starts with a POSIX-style code.
    #[error("{0}")]
    File(String),
    /// A request's body did not arrive in time.
    #[error("{0}")]
    BodyTimeout(String),
    /// A fault in sandgate itself.
    #[error("{0}")]
    Internal(String),
}

impl ServiceError {
    /// Its kind in the one vocabulary (`crate::error`).
    pub fn kind(&self) -> Kind {
        match self {
            Self::Unauthorized(_) => Kind::Unauthorized,
            Self::Forbidden(_) => Kind::Forbidden,
            Self::RateLimited { .. }
            | Self::AtOnce { .. }
            | Self::TooManyRunning { .. }
            | Self::TooManySessions { .. }
            | Self::TooManyKeys { .. } => Kind::RateLimited,
            Self::Rejected(rejected) => rejected.kind(),
            Self::Store(_) => Kind::Unavailable,
            Self::NotFound(_) => Kind::NotFound,
            Self::SessionBusy(_) => Kind::SessionBusy,
            Self::Conflict(_) => Kind::Conflict,
            Self::Invalid(_) | Self::BodyTimeout(_) => Kind::InvalidRequest,
            Self::File(_) => Kind::FileError,
            Self::Internal(_) => Kind::Internal,
        }
    }

    /// When to try again, for a refusal that passes.
    pub fn retry_after_secs(&self) -> Option<u64> {
        match self {
            Self::RateLimited { retry_after_secs, .. } => Some(*retry_after_secs),
            Self::TooManyRunning { .. } | Self::AtOnce { .. } | Self::Store(_) => Some(1),
            Self::Rejected(Rejected::Overloaded { retry_after_secs }) => Some(*retry_after_secs),
            Self::Rejected(Rejected::Cancelled) => Some(1),
            _ => None,
        }
    }

    /// This refusal, counted in `sandgate_executions_rejected_total` where it is
    /// decided, so every surface's refusals are counted once.
    pub(super) fn counted(self) -> Self {
        let reason = match &self {
            Self::RateLimited { .. } | Self::TooManySessions { .. } => "rate_limited",
            Self::TooManyRunning { .. } => "concurrency",
            Self::Rejected(Rejected::Overloaded { .. }) => "overloaded",
            _ => return self,
        };
        crate::telemetry::record_rejection(reason);
        self
    }
}

/// An execution that passed every check and holds its sandbox slot and its place in
/// the principal's share.
pub struct Prepared {
    job: Job,
    /// Who submitted it: whose records it makes.
    principal: Arc<Principal>,
    admission: Admission,
    /// Counted in `sandgate_executions_in_flight` until it ends.
    in_flight: InFlight,
    running: Slot<String>,
    session: Option<sessions::SessionLease>,
    /// The coding agent's session it belongs to, recorded with it.
    agent_session: Option<String>,
    /// The execution's files, to commit or drop when it ends.
    workspace: Option<Arc<Workspace>>,
    /// Started in the background (it has a handle already).
    background: bool,
}

/// Whether callers must present keys. Decided once, when the service starts, from
/// the keys configured then; reloads change which keys exist, never the mode.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// No keys at start: every request is the local principal, and the server serves
    /// loopback addresses only.
    Local,
    /// Keys at start: every request must present one, even after a reload leaves none
    /// (then every request is refused).
    Keyed,
}

/// How often each replica reads the store's keys again: a key created or revoked on
/// any machine is in force everywhere within this.
pub const KEY_REFRESH: Duration = Duration::from_secs(2);

/// The keys in force come from two places: the configuration file (`[[keys]]`, read
/// at start and on SIGHUP) and the store (`sandgate key create` with a shared store,
/// read every [`KEY_REFRESH`]).
#[derive(Debug, Default)]
struct KeySources {
    file: Vec<KeyEntry>,
    stored: Vec<KeyEntry>,
}

/// Everything a request needs, shared by all surfaces.
pub struct Service {
    sandbox: Arc<Sandbox>,
    policies: Arc<Policies>,
    mode: Mode,
    keys: RwLock<Arc<KeyRing>>,
    /// The OIDC issuers whose tokens are accepted beside keys.
    identity: Arc<crate::auth::oidc::Issuers>,
    auth: crate::auth::oidc::AuthConfig,
    key_sources: std::sync::Mutex<KeySources>,
    /// Everything replicas share (see [`crate::store`]).
    store: Arc<dyn crate::store::Store>,
    /// The store's batched writer of records (group commit).
    ledger: Ledger,
    gateway: Arc<Gateway>,
    upstreams: Arc<Upstreams>,
    /// Whether the `tools` door serves the test server (`sandbox.test_capability`).
    test_tools: bool,
    running: Arc<Shares<String>>,
    /// Executions in flight, each a task of its own.
    executions: TaskTracker,
    /// Cancelled when the shutdown grace period ends: executions still running stop.
    stop: CancellationToken,
    /// Background executions running on this replica.
    handles: handles::Handles,
    /// How long a background execution's result is kept.
    result_ttl: Duration,
    /// Sessions' memories kept since their last execution here.
    memories: Arc<memories::MemoryCache>,
    /// How the process's file descriptors are shared out.
    fd_plan: fds::FdPlan,
    /// This process's private directory for workspace copies and spooled uploads.
    scratch: Arc<Scratch>,
    /// File uploads and downloads in flight, per principal.
    transfers: Arc<Shares<shares::PrincipalKey>>,
    /// MCP `subscriptions/listen` streams open, per principal.
    listeners: Arc<Shares<shares::PrincipalKey>>,
    /// `search`'s reranker (`[mcp.search]`).
    search: crate::mcp::SearchConfig,
}

impl std::fmt::Debug for Service {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Service").field("sandbox", &self.sandbox).finish_non_exhaustive()
    }
}

/// An execution's console lines as the ledger keeps them: a JSON array, cut to
/// [`crate::store::MAX_LOG_BYTES`] with a last line saying how many were left out;
/// empty when there are none.
pub(crate) fn kept_logs(lines: &[LogLine]) -> String {
    if lines.is_empty() {
        return String::new();
    }
    let mut parts: Vec<String> = Vec::with_capacity(lines.len());
    let mut size = 2;
    for (i, line) in lines.iter().enumerate() {
        let text = serde_json::to_string(line).unwrap_or_default();
        if size + text.len() + 1 > crate::store::MAX_LOG_BYTES {
            let note = LogLine {
                level: crate::sandbox::LogLevel::Warn,
                message: format!("[{} more lines not kept]", lines.len() - i),
            };
            parts.push(serde_json::to_string(&note).unwrap_or_default());
            break;
        }
        size += text.len() + 1;
        parts.push(text);
    }
    format!("[{}]", parts.join(","))
}

/// The span of one execution (see [`crate::telemetry::trace`]), under the caller's
/// trace when the request carried one.
fn execution_span(job: &Job, principal: &Principal, session: Option<&str>) -> trace::Span {
    use opentelemetry::KeyValue;
    trace::Span::start(opentelemetry::trace::SpanKind::Server, &job.trace, || {
        let mut attributes = trace::principal(principal).to_vec();
        attributes.push(KeyValue::new("sandgate.language", job.language.as_str()));
        if let Some(session) = session {
            attributes.push(KeyValue::new("sandgate.session_id", session.to_string()));
        }
        (format!("execute {}", job.language.as_str()), attributes)
    })
}

/// Ends an execution's span with its outcome and what it used.
fn execution_ended(span: &trace::Span, result: &Result<Outcome, ServiceError>) {
    use opentelemetry::KeyValue;
    match result {
        Ok(outcome) => {
            span.set(|| {
                [
                    KeyValue::new("sandgate.execution_id", outcome.execution_id.clone()),
                    KeyValue::new("sandgate.outcome", outcome.error.as_ref().map_or("ok", |e| e.kind.as_str())),
                    KeyValue::new("sandgate.fuel", outcome.usage.fuel as i64),
                    KeyValue::new("sandgate.wall_ms", outcome.usage.wall_ms as i64),
                    KeyValue::new("sandgate.memory_bytes", outcome.usage.memory_bytes as i64),
                    KeyValue::new("sandgate.host_calls", i64::from(outcome.usage.host_calls)),
                ]
            });
            if let Some(error) = &outcome.error {
                span.fail(error.kind.as_str(), &error.message);
            }
        }
        Err(error) => span.fail(error.kind().as_str(), &error.to_string()),
    }
    span.end();
}

/// `request` as a job under `ceiling`: its limits lowered as it asks (never raised),
/// its code checked; no door yet.
fn job_of(request: ExecuteRequest, ceiling: &Limits) -> Result<Job, Rejected> {
    let limits = ceiling.lowered_by(&request.limits).map_err(Rejected::Invalid)?;
    if request.code.len() as u64 > limits.code_bytes {
        return Err(Rejected::TooLarge { size: request.code.len(), limit: limits.code_bytes });
    }
    if request.code.trim().is_empty() {
        return Err(Rejected::Invalid("`code` is empty".into()));
    }
    let mut job = Job::new(request.code, request.language, limits);
    job.input = request.input;
    // Without trace context of its own, it joins its agent session's trace.
    job.trace = crate::telemetry::trace::in_agent_session(request.trace, request.agent_session.as_deref());
    Ok(job)
}

/// Where an execution's doors stand besides who runs it and under which limits.
#[derive(Default)]
struct DoorsAt<'a> {
    /// Its files: a session's workspace, mounted directories.
    workspace: Option<Arc<Workspace>>,
    /// The coding agent's session it belongs to.
    agent_session: Option<String>,
    /// The sandbox session it runs in.
    session: Option<Arc<str>>,
    /// Calls each door took before a pause, for a resumed execution.
    used: Option<&'a std::collections::BTreeMap<String, u32>>,
}

impl Service {
    /// The doors of one execution of `principal`, each bound to `grants` and counting
    /// against `limits` (see [`crate::sandbox::door`]): `tools`, `model` and `fs`.
    fn doors(&self, principal: &Arc<Principal>, grants: Capabilities, limits: &Limits, at: DoorsAt<'_>) -> Doors {
        let DoorsAt { workspace, agent_session, session, used } = at;
        let used = |door: &str| used.and_then(|used| used.get(door)).copied().unwrap_or(0);
        // A session's files change with the execution's end alone, so an execution in
        // one cannot pause for approval (writes to mounts land at once: those can).
        let pausable = session.is_none();
        let tools = crate::mcp::door::Tools {
            upstreams: self.upstreams.clone(),
            principal: principal.clone(),
            grants: grants.clone(),
            test: self.test_tools,
            calls: Counter::new(limits.tool_calls, "tool calls").with_used(used("tools")),
            session: session.clone(),
            pausable,
        };
        let model = crate::model::door::Model {
            gateway: self.gateway.clone(),
            principal: principal.clone(),
            grants,
            calls: Counter::new(limits.model_calls, "model calls").with_used(used("model")),
            agent_session,
            session,
            pausable,
        };
        let files = match workspace {
            Some(workspace) => Files::Workspace(workspace),
            None => Files::None,
        };
        Doors::default().with("tools", Arc::new(tools)).with("model", Arc::new(model)).with("fs", Arc::new(files))
    }
}

impl Service {
    /// Builds the service `config` describes: policies loaded, ledger opened, guest
    /// compiled. Fails on a policy or ledger problem, naming it.
    pub async fn new(config: &Config) -> anyhow::Result<Self> {
        crate::install_crypto_provider();
        let context =
            LoadContext { known_tiers: config.tiers.clone(), max_memory_bytes: config.sandbox.max_memory_bytes };
        let policies = Policies::load(config.policies.clone(), context).map_err(|e| anyhow::anyhow!("{e}"))?;
        let ledger = Ledger::start(crate::store::open(&config.store).await?);
        let gateway = Arc::new(Gateway::new(config.models.clone(), ledger.clone())?);
        let upstreams = Upstreams::start(config.mcp.clone());
        let fd_plan = fds::plan(fds::raise_open_file_limit(), config.sandbox.max_concurrent);
        let mut sandbox_config = config.sandbox.clone();
        sandbox_config.max_concurrent = fd_plan.max_concurrent;
        let sandbox = tokio::task::spawn_blocking(move || crate::sandbox::Sandbox::new(sandbox_config)).await??;
        let stored: Vec<KeyEntry> = ledger.store().keys().await?.into_iter().map(|k| k.entry).collect();
        let identity = Arc::new(crate::auth::oidc::Issuers::new(&config.auth.oidc));
        let mode =
            if config.keys.is_empty() && stored.is_empty() && identity.is_empty() { Mode::Local } else { Mode::Keyed };
        if !identity.is_empty() {
            let warming = identity.clone();
            tokio::spawn(async move { warming.warm().await });
        }
        let sources = KeySources { file: config.keys.clone(), stored };
        let ring = KeyRing::new(&[sources.file.as_slice(), sources.stored.as_slice()].concat());
        Ok(Self {
            sandbox: Arc::new(sandbox),
            policies: Arc::new(policies),
            mode,
            keys: RwLock::new(Arc::new(ring)),
            identity,
            auth: config.auth.clone(),
            key_sources: std::sync::Mutex::new(sources),
            store: ledger.store().clone(),
            ledger,
            gateway,
            upstreams,
            test_tools: config.test_capability,
            running: Default::default(),
            executions: TaskTracker::new(),
            stop: CancellationToken::new(),
            handles: handles::Handles::default(),
            result_ttl: config.result_ttl,
            memories: Arc::new(memories::MemoryCache::with_limits(memories::MemoryCache::BUDGET, fd_plan.memories)),
            fd_plan,
            scratch: Arc::new(Scratch::create(&config.scratch_dir).map_err(|e| {
                anyhow::anyhow!("cannot make the scratch directory in {}: {e}", config.scratch_dir.display())
            })?),
            transfers: Default::default(),
            listeners: Default::default(),
            search: config.mcp.search.clone(),
        })
    }

    /// How the process's file descriptors are shared out (see [`fds`]).
    pub fn fd_plan(&self) -> fds::FdPlan {
        self.fd_plan
    }

    pub fn sandbox(&self) -> &Arc<Sandbox> {
        &self.sandbox
    }

    pub fn policies(&self) -> &Arc<Policies> {
        &self.policies
    }

    /// The upstream MCP servers.
    pub fn upstreams(&self) -> &Arc<Upstreams> {
        &self.upstreams
    }

    /// The upstream tool catalog and `principal`'s grants, to take the view they allow:
    /// `catalog.view_for(&capabilities)`.
    pub fn tool_catalog(&self, principal: &Principal) -> (Arc<Catalog>, Capabilities) {
        (self.upstreams.catalog(), self.policies.current().capabilities(principal))
    }

    /// A place for one more MCP `subscriptions/listen` stream of `principal` (429
    /// past [`shares::MAX_LISTENERS`]): each holds a connection open for as long as
    /// its client likes.
    pub fn listen(&self, principal: &Principal) -> Result<Slot<shares::PrincipalKey>, ServiceError> {
        self.listeners
            .enter(shares::principal_key(principal), shares::MAX_LISTENERS)
            .ok_or(ServiceError::AtOnce { what: "MCP subscription streams", limit: shares::MAX_LISTENERS })
    }

    pub fn ledger(&self) -> &Ledger {
        &self.ledger
    }

    /// Whether callers must present keys (fixed at start).
    pub fn mode(&self) -> Mode {
        self.mode
    }

    /// Replaces the keys of the configuration file (on SIGHUP).
    pub fn set_file_keys(&self, keys: Vec<KeyEntry>) {
        let mut sources = self.key_sources.lock().unwrap_or_else(|e| e.into_inner());
        sources.file = keys;
        self.install_keys(&sources);
    }

    /// Reads the store's keys again: how a key created or revoked on any machine
    /// reaches this replica (see [`Service::watch_keys`]).
    pub async fn refresh_stored_keys(&self) -> Result<(), StoreError> {
        let stored = self.store.keys().await?;
        let mut sources = self.key_sources.lock().unwrap_or_else(|e| e.into_inner());
        let stored: Vec<KeyEntry> = stored.into_iter().map(|k| k.entry).collect();
        if stored != sources.stored {
            sources.stored = stored;
            self.install_keys(&sources);
        }
        Ok(())
    }

    /// Refreshes the store's keys every [`KEY_REFRESH`] until the service stops (a
    /// store that does not answer leaves the keys in force as they are), lets
    /// sessions' memories unused for long go, and gives budget headroom this replica
    /// leased and stopped drawing from back.
    pub fn watch_keys(self: &Arc<Self>) {
        self.every(KEY_REFRESH, |service| async move {
            service.memories.sweep(std::time::Instant::now());
            service.gateway.give_back_old_leases();
            if let Err(error) = service.refresh_stored_keys().await {
                tracing::warn!(%error, "cannot refresh the store's keys; keeping the keys in force");
            }
        });
    }

    /// Runs `work` every `period` (the first at once) until the service stops or is
    /// dropped; a tick that `work` overruns is skipped, not piled up.
    fn every<F, W>(self: &Arc<Self>, period: Duration, work: W)
    where
        W: Fn(Arc<Self>) -> F + Send + 'static,
        F: std::future::Future<Output = ()> + Send,
    {
        let service = Arc::downgrade(self);
        let stop = self.stop.clone();
        tokio::spawn(async move {
            let mut ticks = tokio::time::interval(period);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = ticks.tick() => {}
                }
                let Some(service) = service.upgrade() else { return };
                work(service).await;
            }
        });
    }

    /// Installs the keys of both sources. The mode stays what it was at start: a keyed
    /// server left with no keys refuses every request, and keys added to a local-mode
    /// server take effect only after a restart.
    fn install_keys(&self, sources: &KeySources) {
        let keys = KeyRing::new(&[sources.file.as_slice(), sources.stored.as_slice()].concat());
        match self.mode {
            Mode::Local if !keys.is_empty() => tracing::warn!(
                keys = keys.len(),
                "keys were added, but this server started without keys and stays in local mode; restart it to \
                 require keys"
            ),
            Mode::Local => {}
            Mode::Keyed => {
                if keys.is_empty() && self.identity.is_empty() {
                    tracing::warn!(
                        "no keys are left: every request is refused until keys are added (a server started with \
                         keys never serves the local user)"
                    );
                }
                tracing::info!(keys = keys.len(), "keys in force");
                *self.keys.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(keys);
            }
        }
    }

    /// The principal a request's credential names. In local mode every request is
    /// the local principal (the server then listens on loopback only); in keyed mode
    /// the credential must be a configured key or a token from a configured identity
    /// provider.
    pub async fn authenticate(&self, credential: Option<&str>) -> Result<Arc<Principal>, ServiceError> {
        if self.mode == Mode::Local {
            return Ok(Arc::new(Principal::local()));
        }
        let Some(credential) = credential else {
            let how = if self.identity.is_empty() {
                "send `Authorization: Bearer <key>`"
            } else {
                "send `Authorization: Bearer <key or token from the identity provider>`"
            };
            return Err(ServiceError::Unauthorized(format!("no credential: {how}")));
        };
        if !self.identity.is_empty() && crate::auth::oidc::Issuers::looks_like_jwt(credential) {
            return match self.identity.verify(credential).await {
                Ok(principal) => Ok(Arc::new(principal)),
                Err(error) => {
                    crate::telemetry::record_rejection("token");
                    Err(ServiceError::Unauthorized(error.to_string()))
                }
            };
        }
        self.authenticate_key(credential)
    }

    /// The principal of a configured API key (keyed mode) or the local principal.
    pub fn authenticate_key(&self, key: &str) -> Result<Arc<Principal>, ServiceError> {
        match self.mode {
            Mode::Local => Ok(Arc::new(Principal::local())),
            Mode::Keyed => {
                let keys = self.keys.read().unwrap_or_else(|e| e.into_inner()).clone();
                keys.authenticate(key).ok_or_else(|| ServiceError::Unauthorized("unknown API key".into()))
            }
        }
    }

    /// The identity providers whose tokens are accepted.
    pub fn identity(&self) -> &Arc<crate::auth::oidc::Issuers> {
        &self.identity
    }

    /// `[auth]` as configured.
    pub fn auth_config(&self) -> &crate::auth::oidc::AuthConfig {
        &self.auth
    }

    /// Checks `request` against the principal's policies and rate limits and takes a
    /// sandbox slot.
    pub async fn prepare(&self, principal: Arc<Principal>, request: ExecuteRequest) -> Result<Prepared, ServiceError> {
        self.prepare_as(principal, request, false).await
    }

    /// [`Service::prepare`], for an execution in the background when `background`:
    /// its wall-clock ceiling is then `limits.background_wall_ms`.
    async fn prepare_as(
        &self,
        principal: Arc<Principal>,
        request: ExecuteRequest,
        background: bool,
    ) -> Result<Prepared, ServiceError> {
        let capabilities = self.policies.current().capabilities(&principal);
        let Some(ceiling) = capabilities.limits else {
            return Err(ServiceError::Forbidden(format!(
                "no policy lets user `{}` (team `{}`, key `{}`) run code",
                principal.user, principal.team, principal.key
            )));
        };
        let ceiling = if background { ceiling.for_background() } else { ceiling };
        let ceiling = Limits { concurrent: ceiling.share_of(self.sandbox.config().max_concurrent), ..ceiling };
        if let Some(per_minute) = capabilities.rate.executions_per_minute {
            self.store.take(&principal.user, "executions", per_minute).await?.map_err(|retry_after_secs| {
                ServiceError::RateLimited { what: "executions", per_minute, retry_after_secs }.counted()
            })?;
        }
        let session = match request.session_id.clone() {
            None => None,
            Some(id) => {
                let grant = self.sessions_grant(&principal)?;
                let hold = Duration::from_millis(ceiling.wall_ms) + self.sandbox.config().queue_timeout;
                let mut lease = self.lease_session(&principal, &id, grant.max_bytes, hold).await?;
                // JavaScript and TypeScript share a guest; Python has its own, and a
                // session's memory is one guest's.
                if lease.language().guest() != request.language.guest() {
                    return Err(ServiceError::Invalid(format!(
                        "session `{id}` runs {}; this code is {}: open a session for it",
                        lease.language().as_str(),
                        request.language.as_str()
                    )));
                }
                let memory = self.session_memory(&mut lease, request.language).await?;
                Some((lease, memory))
            }
        };
        let files = capabilities.files.clone();
        let agent_session = request.agent_session.clone();
        let mut job = job_of(request, &ceiling)?;
        let session = session.map(|(lease, memory)| {
            job.session = Some(memory);
            lease
        });
        let workspace = Workspace::new(
            session
                .as_ref()
                .map(|lease| SessionFiles { store: self.store.clone(), session_id: lease.id().to_string() }),
            files,
            job.limits.result_bytes,
            self.scratch.clone(),
            MountWrites { store: self.store.clone(), owner: crate::store::Owner::of(&principal) },
        );
        let workspace = (!workspace.is_empty()).then(|| Arc::new(workspace));
        let session_id = session.as_ref().map(|lease| Arc::<str>::from(lease.id()));
        let at = DoorsAt {
            workspace: workspace.clone(),
            agent_session: agent_session.clone(),
            session: session_id,
            used: None,
        };
        job.doors = self.doors(&principal, capabilities, &job.limits, at);
        // A full server answers 503 whoever asks; a caller over their own share, 429.
        let admission = self.sandbox.admit().map_err(|overloaded| ServiceError::from(overloaded).counted())?;
        let limit = job.limits.concurrent;
        let running = self
            .running
            .enter(principal.user.clone(), limit)
            .ok_or_else(|| ServiceError::TooManyRunning { user: principal.user.clone(), limit }.counted())?;
        Ok(Prepared {
            job,
            principal,
            admission,
            running,
            session,
            agent_session,
            workspace,
            in_flight: InFlight::enter(),
            background,
        })
    }

    /// Runs a prepared execution and commits its records before returning: an
    /// outcome this returns is in the ledger. Dropping this future cancels the
    /// execution, which is still recorded (see the module docs).
    pub async fn run(&self, prepared: Prepared, events: Option<LineSender>) -> Result<Outcome, ServiceError> {
        self.start(prepared, events).await
    }

    /// Starts a prepared execution now, as a task of its own, and returns its handle:
    /// awaiting it gives what [`Service::run`] gives; dropping it first cancels the
    /// execution.
    pub fn start(&self, prepared: Prepared, events: Option<LineSender>) -> Execution {
        let cancel = self.stop.child_token();
        let (sandbox, ledger) = (self.sandbox.clone(), self.ledger.clone());
        let Prepared {
            mut job,
            principal,
            admission,
            in_flight,
            running,
            session,
            agent_session,
            workspace,
            background,
        } = prepared;
        let pause_context = approvals::PauseContext::new(&principal, job.limits, agent_session.clone(), background);
        let (store, public_url, result_ttl) = (self.store.clone(), self.auth.public_url.clone(), self.result_ttl);
        let span = execution_span(&job, &principal, session.as_ref().map(|lease| lease.id()));
        job.trace = span.context().clone();
        let task = self.executions.spawn({
            let cancel = cancel.clone();
            let run = async move {
                let started = std::time::Instant::now();
                let outcome = sandbox.run_admitted(admission, job, events, &cancel).await;
                drop((running, in_flight));
                let mut outcome = outcome.map_err(|refused| ServiceError::from(refused).counted())?;
                // A pause is kept in the store before anyone hears of it.
                if outcome.paused.is_some() {
                    approvals::keep_paused(
                        &store,
                        public_url.as_deref(),
                        &pause_context,
                        &mut outcome,
                        &[],
                        result_ttl,
                    )
                    .await;
                }
                // The outcome is decided here, so its metrics are recorded here.
                crate::telemetry::record_execution(&outcome, started.elapsed());
                let (changes, mount_bytes) = match &workspace {
                    Some(workspace) => workspace.finish(outcome.ok).await,
                    None => (Ok(Vec::new()), 0),
                };
                // Files that cannot be read back fail the execution: the session stays
                // as it was, memory and files alike.
                let changes = changes.unwrap_or_else(|error| {
                    outcome.ok = false;
                    outcome.result = None;
                    outcome.error = Some(error);
                    Vec::new()
                });
                let records = |outcome: &Outcome| {
                    let mut records = records(&principal, outcome, agent_session);
                    if outcome.paused.is_some() {
                        // The calls so far; the execution's own record comes when it ends.
                        records.retain(|record| matches!(record, Record::Call(_)));
                    }
                    records
                };
                match session {
                    Some(lease) => {
                        lease.give_back(&ledger, &principal, &mut outcome, &changes, mount_bytes, records).await?
                    }
                    None => {
                        let mut records = records(&outcome);
                        if mount_bytes > 0 {
                            records.push(sessions::event(&principal, "", "files_written", mount_bytes));
                        }
                        ledger.record(records).await?
                    }
                }
                Ok(outcome)
            };
            async move {
                let result = run.await;
                execution_ended(&span, &result);
                result
            }
        });
        Execution { task, cancel: cancel.clone(), cancel_if_dropped: Some(cancel.drop_guard()) }
    }

    /// The token that, once cancelled, cancels every execution still running: the
    /// server cancels it when its shutdown grace period ends.
    pub fn cancel_on_shutdown(&self) -> &CancellationToken {
        &self.stop
    }

    /// Waits up to `grace` for executions to finish, then cancels those still running
    /// (background executions have no request to wait on, so the HTTP server's grace
    /// period never reaches them) and waits for them to be recorded; then waits for
    /// model calls in flight up to `grace` and commits every record.
    pub async fn finish(&self, grace: Duration) -> Result<(), StoreError> {
        self.executions.close();
        if tokio::time::timeout(grace, self.executions.wait()).await.is_err() {
            self.stop.cancel();
            self.executions.wait().await;
        }
        self.gateway.stop(grace).await;
        self.ledger.flush().await
    }

    /// [`Service::prepare`] then [`Service::run`].
    pub async fn execute(&self, principal: Arc<Principal>, request: ExecuteRequest) -> Result<Outcome, ServiceError> {
        let prepared = self.prepare(principal, request).await?;
        self.run(prepared, None).await
    }

    /// Whether this replica can serve: the store answers within two seconds.
    pub async fn ready(&self) -> Result<(), StoreError> {
        match tokio::time::timeout(Duration::from_secs(2), self.store.ping()).await {
            Ok(answer) => answer,
            Err(_) => Err(StoreError("the store did not answer within 2 s".into())),
        }
    }

    /// A model call from an SDK client (`/v1/chat/completions`, `/v1/messages`,
    /// `/v1/responses`, Gemini's `generateContent`). Its span (`POST
    /// /v1/chat/completions`, server) is a child of `parent`, the caller's trace,
    /// and the parent of each attempt's.
    pub async fn model_call(
        &self,
        principal: Arc<Principal>,
        call: crate::model::Call,
        parent: opentelemetry::Context,
    ) -> Result<Answer, ModelError> {
        use opentelemetry::KeyValue;
        let route = match call.format {
            Format::Anthropic => "/v1/messages",
            Format::Responses => "/v1/responses",
            Format::Gemini => "/v1beta/models/{model}",
            _ => "/v1/chat/completions",
        };
        // Without trace context of its own, the call joins its agent session's trace.
        let parent = trace::in_agent_session(parent, call.agent_session.as_deref());
        let span = trace::Span::start(opentelemetry::trace::SpanKind::Server, &parent, || {
            let mut attributes = trace::principal(&principal).to_vec();
            attributes.extend([
                KeyValue::new("http.request.method", "POST"),
                KeyValue::new("http.route", route),
                KeyValue::new("gen_ai.operation.name", "chat"),
            ]);
            attributes.push(KeyValue::new("gen_ai.request.model", call.model.clone()));
            (format!("POST {route}"), attributes)
        });
        let capabilities = self.policies.current().capabilities(&principal);
        let agent_session = call.agent_session.clone();
        let ctx =
            CallContext { principal, capabilities, execution_id: None, trace: span.context().clone(), agent_session };
        let answer = self.gateway.call(ctx, call).await;
        match &answer {
            Ok(Answer::Whole { status, routed, .. } | Answer::Stream { status, routed, .. }) => {
                span.set(|| {
                    [
                        KeyValue::new("http.response.status_code", i64::from(*status)),
                        KeyValue::new("sandgate.model", routed.model.clone()),
                        KeyValue::new("sandgate.tier", routed.tier.clone()),
                        KeyValue::new("sandgate.fallback_count", routed.fallbacks.len() as i64),
                    ]
                });
            }
            Err(error) => {
                if let Some(status) = error.upstream_status() {
                    span.set(|| [KeyValue::new("http.response.status_code", i64::from(status))]);
                }
                span.fail(error.kind().as_str(), &error.to_string());
            }
        }
        span.end();
        answer
    }

    /// Counts a request's input tokens for `principal` (see
    /// [`crate::model::Gateway::count_tokens`]).
    pub async fn count_tokens(
        &self,
        principal: Arc<Principal>,
        call: crate::model::Call,
    ) -> Result<Answer, ModelError> {
        let capabilities = self.policies.current().capabilities(&principal);
        let ctx = CallContext {
            principal,
            capabilities,
            execution_id: None,
            trace: opentelemetry::Context::new(),
            agent_session: None,
        };
        self.gateway.count_tokens(&ctx, &call).await
    }

    /// `POST /v1/responses/compact` for `principal` (see
    /// [`crate::model::Gateway::compact`]).
    pub async fn compact(&self, principal: Arc<Principal>, call: crate::model::Call) -> Result<Answer, ModelError> {
        let capabilities = self.policies.current().capabilities(&principal);
        let agent_session = call.agent_session.clone();
        let trace = crate::telemetry::trace::in_agent_session(opentelemetry::Context::new(), agent_session.as_deref());
        let ctx = CallContext { principal, capabilities, execution_id: None, trace, agent_session };
        self.gateway.compact(ctx, call).await
    }

    /// The models, tiers and routing names `principal` may use.
    pub fn models(&self, principal: &Principal) -> serde_json::Value {
        self.gateway.list(&self.policies.current().capabilities(principal))
    }

    /// Reloads the policy files; on error the current set stays in force.
    pub fn reload_policies(&self) -> Result<(), PolicyError> {
        self.policies.reload()
    }
}

/// A started execution (see [`Service::start`]).
pub struct Execution {
    task: tokio::task::JoinHandle<Result<Outcome, ServiceError>>,
    cancel: CancellationToken,
    cancel_if_dropped: Option<tokio_util::sync::DropGuard>,
}

impl Execution {
    /// Cancels the execution; awaiting it still gives its (cancelled) outcome, recorded.
    pub fn cancel(&self) {
        self.cancel.cancel();
    }
}

impl std::future::Future for Execution {
    type Output = Result<Outcome, ServiceError>;

    fn poll(mut self: std::pin::Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> std::task::Poll<Self::Output> {
        let result = std::task::ready!(std::pin::Pin::new(&mut self.task).poll(cx));
        if let Some(guard) = self.cancel_if_dropped.take() {
            guard.disarm();
        }
        std::task::Poll::Ready(
            result.unwrap_or_else(|error| Err(ServiceError::Internal(format!("the execution task failed: {error}")))),
        )
    }
}

fn records(principal: &Principal, outcome: &Outcome, agent_session: Option<String>) -> Vec<Record> {
    let mut records = Vec::with_capacity(1 + outcome.calls.len());
    records.push(Record::Execution(ExecutionRecord {
        id: outcome.execution_id.clone(),
        user: principal.user.clone(),
        team: principal.team.clone(),
        key: principal.key.clone(),
        started_at_ms: outcome.started_at_ms,
        ended_at_ms: outcome.started_at_ms + outcome.usage.wall_ms as i64,
        outcome: outcome.error.as_ref().map_or("ok", |e| e.kind.as_str()).to_string(),
        fuel: outcome.usage.fuel,
        wall_ms: outcome.usage.wall_ms,
        memory_bytes: outcome.usage.memory_bytes,
        host_calls: outcome.usage.host_calls,
        logs: kept_logs(&outcome.logs),
        agent_session,
    }));
    for call in &outcome.calls {
        records.push(Record::Call(CallRecord {
            execution_id: outcome.execution_id.clone(),
            user: principal.user.clone(),
            team: principal.team.clone(),
            name: call.name.clone(),
            started_at_ms: call.started_at_ms,
            latency_ms: call.latency_ms,
            outcome: call.outcome.clone(),
        }));
    }
    records
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sandbox::LogLevel;

    #[test]
    fn kept_logs_are_json_cut_at_their_limit_with_a_note() {
        assert_eq!(kept_logs(&[]), "");
        let line = |message: &str| LogLine { level: LogLevel::Log, message: message.into() };
        let kept: Vec<LogLine> = serde_json::from_str(&kept_logs(&[line("a"), line("b")])).unwrap();
        assert_eq!(kept.iter().map(|l| l.message.as_str()).collect::<Vec<_>>(), ["a", "b"]);
        let long: Vec<LogLine> = (0..1_000).map(|i| line(&format!("line {i} {}", "x".repeat(40)))).collect();
        let text = kept_logs(&long);
        assert!(text.len() <= crate::store::MAX_LOG_BYTES + 100, "{}", text.len());
        let kept: Vec<LogLine> = serde_json::from_str(&text).unwrap();
        let last = kept.last().unwrap();
        assert_eq!(last.level, LogLevel::Warn);
        assert_eq!(last.message, format!("[{} more lines not kept]", 1_000 - (kept.len() - 1)));
    }
}
