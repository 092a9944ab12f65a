//! The sandbox: runs one piece of agent JavaScript in a fresh wasmtime store.
//!
//! Every execution gets its own `Store` instantiated from the pre-initialised guest
//! (QuickJS with its runtime, context and prelude already built), so it starts in
//! microseconds and shares nothing with any other execution. Limits:
//! fuel (CPU), an epoch deadline (wall clock), a memory cap enforced by trapping,
//! byte caps on console output, result and host-call arguments and replies, and a cap
//! on host calls. Admission is bounded (`max_concurrent`, else `overloaded`), and guest
//! code runs only while holding one of `cpu_slots` slots, given up at every epoch tick
//! and while parked on host calls.

pub mod console;
pub mod door;
pub mod engine;
pub mod error;
mod host;
pub mod image;
pub mod mapped;
mod metered;
mod tiers;
pub mod wasi;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;
use serde_json::value::RawValue;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use wasmtime::{InstancePre, Module, Store, Trap, UpdateDeadline};

pub use console::{LineSender, LogLevel, LogLine, LINE_BUFFER, LINE_COST, TRUNCATED};
pub use door::{Call, Counter, Door, Doors, Hold, Pending, Started};
pub use engine::Compiler;
pub use error::{ExecError, Rejected};
pub use host::{HeldCall, HostCallRecord};
pub use image::MemoryImage;
pub use mapped::MemoryFile;

use crate::error::Kind;
use crate::limits::Limits;
use crate::request::{Language, TraceContext};
use host::{CpuSlot, GuestOutcome, HostSetup, HostState};
use tiers::{Background, Engines, Guest};

/// How the sandbox is set up; fixed for the life of a [`Sandbox`].
#[derive(Clone, Debug)]
pub struct SandboxConfig {
    /// Executions admitted at once (running, queued for CPU, or parked on host calls).
    pub max_concurrent: u32,
    /// Executions running guest code at once; 0 means one per CPU core.
    pub cpu_slots: u32,
    /// How long an admitted execution may wait for a CPU slot before `overloaded`.
    pub queue_timeout: Duration,
    /// Upper bound for any execution's memory limit.
    pub max_memory_bytes: u64,
    /// Directory for the compiled-guest cache; `None` compiles at every start.
    pub cache_dir: Option<std::path::PathBuf>,
    /// Which compiler makes the guests' code (see [`Compiler`]).
    pub compiler: Compiler,
}

impl Default for SandboxConfig {
    fn default() -> Self {
        Self {
            max_concurrent: 256,
            cpu_slots: 0,
            queue_timeout: Duration::from_secs(10),
            max_memory_bytes: 256 << 20,
            cache_dir: Some(engine::default_cache_dir()),
            compiler: Compiler::default(),
        }
    }
}

/// A held execution slot (see [`Sandbox::admit`]).
#[derive(Debug)]
pub struct Admission {
    _permit: tokio::sync::OwnedSemaphorePermit,
}

/// One execution to run.
#[derive(Clone)]
pub struct Job {
    /// The code as submitted.
    pub code: String,
    /// Its language; TypeScript is stripped inside the sandbox, under the limits of
    /// the preparation phase (see `prepare_limits`).
    pub language: Language,
    pub input: Option<serde_json::Value>,
    pub limits: Limits,
    /// Its doors out, besides the console: built by the caller for this execution
    /// alone, already bound to whoever submitted it (see [`door`]).
    pub doors: Doors,
    /// Run in a session, starting from its memory (see [`Sandbox::session_memory`]);
    /// `None` for a fresh execution. The execution reads the file and never writes it:
    /// the pages it changed come back as its outcome's `session_image`, for the
    /// caller to keep (and [`MemoryFile::apply`]) or drop.
    pub session: Option<Arc<MemoryFile>>,
    /// The execution's id when the caller chose it (a background execution's handle
    /// is known before it runs); a fresh UUIDv7 otherwise.
    pub id: Option<Arc<str>>,
    /// The trace context host calls take as their parent (the execution's span).
    pub trace: TraceContext,
}

impl Job {
    /// `code` in `language` under `limits`, with no door but the console, fresh (not
    /// in a session), with a new id.
    pub fn new(code: impl Into<String>, language: Language, limits: Limits) -> Self {
        Self {
            code: code.into(),
            language,
            input: None,
            limits,
            doors: Doors::default(),
            session: None,
            id: None,
            trace: TraceContext::default(),
        }
    }
}

impl std::fmt::Debug for Job {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Job").field("limits", &self.limits).field("doors", &self.doors).finish_non_exhaustive()
    }
}

/// Resources one execution used.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Usage {
    /// Fuel consumed.
    pub fuel: u64,
    /// Wall-clock milliseconds from start of guest code to its end.
    pub wall_ms: u64,
    /// Peak linear memory in bytes.
    pub memory_bytes: u64,
    /// Host calls started.
    pub host_calls: u32,
    /// What stripping TypeScript took, for TypeScript that was stripped (it is part
    /// of the totals above).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub strip: Option<StripUsage>,
}

/// The share of an execution's usage spent turning TypeScript into JavaScript.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct StripUsage {
    pub fuel: u64,
    /// Microseconds of wall-clock time.
    pub wall_us: u64,
    /// Peak linear memory while stripping, in bytes.
    pub memory_bytes: u64,
}

/// The outcome of one execution: the response body of `POST /v1/execute`.
#[derive(Debug, Serialize)]
pub struct Outcome {
    pub ok: bool,
    pub result: Option<Box<RawValue>>,
    pub logs: Vec<LogLine>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<ExecError>,
    /// `paused` when the execution waits for approvals (listed in `approvals`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<&'static str>,
    /// The approvals a paused execution waits for, as whoever keeps them describes
    /// them (id, tool, where to decide).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub approvals: Vec<serde_json::Value>,
    pub usage: Usage,
    pub execution_id: String,
    /// Unix milliseconds when the guest started.
    #[serde(skip)]
    pub started_at_ms: i64,
    /// The host calls the execution made, for the ledger.
    #[serde(skip)]
    pub calls: Vec<HostCallRecord>,
    /// After a session's execution that succeeded: the pages of the session's memory
    /// it changed (and the memory's size), which written over the memory it started
    /// from make the memory its next execution starts from. A failed execution gives
    /// none, so the session stays where it was before it.
    #[serde(skip)]
    pub session_image: Option<MemoryImage>,
    /// Set when the execution paused at calls held outside it (`ok` is then false
    /// and `error` none): what it needs to go on, for [`Sandbox::resume`].
    #[serde(skip)]
    pub paused: Option<Box<Paused>>,
}

/// An execution stopped at calls its doors held ([`Started::Held`]), with everything
/// it needs to go on, on any replica: the pages of its memory that differ from a
/// fresh guest's, and its bookkeeping. The guest returned from its export at the
/// pause, so nothing of it lives on any stack; [`Sandbox::resume`] writes the memory
/// into a fresh instance and calls the guest's `resume`. No code runs again and no
/// call is made again: the calls it made before are answered and done.
#[derive(Clone, Debug, Serialize, serde::Deserialize)]
pub struct Paused {
    pub language: Language,
    /// The memory (not serialized: [`MemoryImage::encode`] stores it apart).
    #[serde(skip)]
    pub memory: MemoryImage,
    /// The calls it waits for.
    pub held: Vec<HeldCall>,
    /// Calls it has started, held ones included (ids go on from here).
    pub calls_started: u32,
    /// Calls each door took before the pause, the held ones apart (they are made, and
    /// counted, again when released): a resumed execution's doors count on from here.
    #[serde(default)]
    pub door_calls: std::collections::BTreeMap<String, u32>,
    /// What it used before the pause: fuel, wall-clock time, output, memory.
    pub fuel_used: u64,
    pub wall_ms: u64,
    pub output_used: u64,
    pub memory_peak: u64,
    /// Its console lines so far: the outcome carries them all.
    pub logs: Vec<LogLine>,
    /// Unix milliseconds when it first started.
    pub started_at_ms: i64,
}

/// A paused execution to go on with (see [`Sandbox::resume`]).
pub struct Resume {
    pub paused: Paused,
    /// For each held call: cleared (what cleared it, e.g. the approval's id), so the
    /// door makes it now; or refused with an error the code sees. A held call not
    /// named stays held, and the execution pauses again once nothing else is in
    /// flight.
    pub decisions: Vec<(u32, Result<Arc<str>, ExecError>)>,
    /// The execution's doors, built anew for its principal.
    pub doors: Doors,
    /// Its limits, as it started with them.
    pub limits: Limits,
    pub id: Arc<str>,
    pub trace: TraceContext,
}

/// What a resumed execution starts from, besides its job.
struct Resumed {
    held: Vec<HeldCall>,
    door_calls: std::collections::BTreeMap<String, u32>,
    decisions: Vec<(u32, Result<Arc<str>, ExecError>)>,
    calls_started: u32,
    fuel_used: u64,
    wall_ms: u64,
    output_used: u64,
    memory_peak: u64,
    logs: Vec<LogLine>,
    started_at_ms: i64,
    memory: Arc<MemoryFile>,
}

/// The sandbox: engines, compiled guests and admission control.
pub struct Sandbox {
    /// Fresh executions' engines (see [`tiers`]).
    fresh: Arc<Engines>,
    javascript: Arc<Guest>,
    /// The Python guest, compiled when the first Python execution comes: a server that
    /// never runs Python never compiles it.
    python: tokio::sync::OnceCell<Arc<Guest>>,
    admission: Arc<Semaphore>,
    cpu: Arc<Semaphore>,
    config: SandboxConfig,
    /// Session executions' engines (see [`mapped`]).
    sessions: Arc<Engines>,
    /// Each guest (JavaScript, Python) on the session engines, made on first use.
    session_guests: [tokio::sync::OnceCell<SessionGuest>; 2],
    /// Optimised code being compiled while Winch's serves (see [`tiers`]).
    background: Arc<Background>,
}

/// A guest on the session engines: its data segments emptied, and the memory they
/// describe, which every session's memory starts from.
struct SessionGuest {
    guest: Arc<Guest>,
    pristine: Arc<mapped::Pristine>,
    /// Whether its instances may be kept between a session's executions ([`Warm`]):
    /// its one mutable global is its stack pointer, which a call that returned left
    /// as it found it, so a kept instance is in the state a fresh one over the
    /// session's memory would be.
    keeps_instances: bool,
}

/// A session's instance kept on its replica after an execution that succeeded, its
/// memory still mapped and resident, with the session's [`MemoryFile`]: the
/// session's next execution here runs in it instead of mapping the file into a fresh
/// instance, and the kernel says which pages it wrote ([`mapped::WriteTracker`]).
/// Mapping, faulting the pages in and unmapping them again (with a TLB flush that
/// interrupts every other core) were most of what an execution in a session cost
/// over a fresh one. The instance is only kept once its pages are in the store (see
/// [`MemoryFile::apply`]); any other end drops it.
pub(crate) struct Warm {
    tracker: Tracking,
    store: Store<HostState>,
    instance: wasmtime::Instance,
    memory: wasmtime::Memory,
    module: Module,
}

/// A kept instance's [`mapped::WriteTracker`].
enum Tracking {
    Ready(mapped::WriteTracker),
    /// While it protects the pages the last execution wrote.
    Protecting(tokio::task::JoinHandle<mapped::WriteTracker>),
}

/// Pages a kept memory lists as written past which they are protected again after
/// the execution. Up to this many stay unprotected, and are listed and compared
/// after every execution (under a microsecond a page) until they pass it together:
/// a steady session rewrites most of the same pages each time (about 40 for a small
/// JavaScript session), and protecting them would cost a TLB flush on every core
/// for pages written again at once.
const PROTECT_PAST: usize = 64;

impl Warm {
    /// The instance, once its tracker has protected the pages the last execution
    /// wrote (on a thread of its own, which ends before the memory is used); `None`
    /// if that thread failed.
    async fn ready(self) -> Option<(mapped::WriteTracker, Store<HostState>, wasmtime::Instance, wasmtime::Memory)> {
        let tracker = match self.tracker {
            Tracking::Ready(tracker) => tracker,
            Tracking::Protecting(protecting) => protecting.await.ok()?,
        };
        Some((tracker, self.store, self.instance, self.memory))
    }
}

impl std::fmt::Debug for Warm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Warm").finish_non_exhaustive()
    }
}

impl std::fmt::Debug for Sandbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sandbox").field("config", &self.config).finish_non_exhaustive()
    }
}

impl Sandbox {
    /// Makes the engines, loads the JavaScript guest (from the compile cache when
    /// possible; see [`Compiler`] for what happens when it is not there) and links the
    /// host functions: the WASI shim ([`wasi`]) and the `sandgate_v1` ABI.
    pub fn new(config: SandboxConfig) -> anyhow::Result<Self> {
        let settings = engine::EngineSettings {
            max_memory_bytes: config.max_memory_bytes,
            max_instances: config.max_concurrent.saturating_add(8),
        };
        let fresh = Arc::new(Engines::fresh(move || engine::build_engine(&settings)));
        let background = Arc::new(Background::default());
        let javascript =
            fresh.load(engine::GUEST_WASM.into(), config.compiler, config.cache_dir.clone(), &background)?;
        let cpu_slots = match config.cpu_slots {
            0 => std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2),
            n => n as usize,
        };
        Ok(Self {
            fresh,
            javascript,
            python: tokio::sync::OnceCell::new(),
            admission: Arc::new(Semaphore::new(config.max_concurrent as usize)),
            cpu: Arc::new(Semaphore::new(cpu_slots)),
            config,
            sessions: Arc::new(Engines::session()),
            session_guests: [tokio::sync::OnceCell::new(), tokio::sync::OnceCell::new()],
            background,
        })
    }

    pub fn config(&self) -> &SandboxConfig {
        &self.config
    }

    /// Waits until the optimised code being compiled in the background (if any) is in
    /// use and in the compile cache. A one-off command calls it before it exits, so the
    /// next one finds the cache filled.
    pub fn settle(&self) {
        self.background.settle();
    }

    /// Whether `language`'s guest (on the session engines when `session`) runs
    /// Cranelift's optimised code, or Winch's (see [`Compiler`]); `None` while it has not
    /// been loaded.
    pub fn optimized(&self, language: Language, session: bool) -> Option<bool> {
        let python = language == Language::Python;
        let guest = match session {
            true => self.session_guests[usize::from(python)].get().map(|session| &session.guest),
            false if python => self.python.get(),
            false => Some(&self.javascript),
        };
        guest.map(|guest| guest.optimized())
    }

    /// The Python guest, compiled (or read from the compile cache) on first use.
    async fn python(&self) -> anyhow::Result<&Arc<Guest>> {
        self.python
            .get_or_try_init(|| {
                let (engines, compiler, cache, background) = self.loading(&self.fresh);
                async move {
                    tokio::task::spawn_blocking(move || {
                        engines.load(engine::PYTHON_WASM.into(), compiler, cache, &background)
                    })
                    .await?
                }
            })
            .await
    }

    /// What loading a guest on `engines` on a blocking thread takes.
    fn loading(&self, engines: &Arc<Engines>) -> (Arc<Engines>, Compiler, Option<PathBuf>, Arc<Background>) {
        (engines.clone(), self.config.compiler, self.config.cache_dir.clone(), self.background.clone())
    }

    /// `language`'s guest on the session engines, compiled (or read from the compile
    /// cache) on first use.
    async fn session_guest(&self, language: Language) -> anyhow::Result<&SessionGuest> {
        let python = language == Language::Python;
        self.session_guests[usize::from(python)]
            .get_or_try_init(|| {
                let (engines, compiler, cache, background) = self.loading(&self.sessions);
                async move {
                    tokio::task::spawn_blocking(move || {
                        let wasm = if python { engine::PYTHON_WASM } else { engine::GUEST_WASM };
                        let (stripped, pristine) = mapped::without_active_data(wasm)?;
                        let keeps_instances = mapped::mutable_globals(&stripped)? <= 1;
                        let guest = engines.load(stripped.into(), compiler, cache, &background)?;
                        let pristine = Arc::new(mapped::Pristine::new(pristine)?);
                        Ok(SessionGuest { guest, pristine, keeps_instances })
                    })
                    .await?
                }
            })
            .await
    }

    /// A session's memory as an execution in it starts from, in a file of its own: a
    /// fresh `language` guest's memory, `size` bytes long, with `pages` (those that
    /// differ from it; none for a new session) written over it.
    pub async fn session_memory<'a>(
        &self,
        language: Language,
        size: u64,
        pages: impl IntoIterator<Item = (u32, &'a [u8])>,
    ) -> anyhow::Result<MemoryFile> {
        let guest = self.session_guest(language).await?;
        Ok(MemoryFile::create(guest.pristine.clone(), size, pages)?)
    }

    /// Takes an execution slot, or says the server is full. Holding the returned
    /// [`Admission`] counts as one of `max_concurrent` executions.
    pub fn admit(&self) -> Result<Admission, Rejected> {
        let permit =
            self.admission.clone().try_acquire_owned().map_err(|_| Rejected::Overloaded { retry_after_secs: 1 })?;
        Ok(Admission { _permit: permit })
    }

    /// Runs `job`: [`Sandbox::admit`], then [`Sandbox::run_admitted`].
    pub async fn execute(&self, job: Job, lines: Option<LineSender>) -> Result<Outcome, Rejected> {
        let admission = self.admit()?;
        self.run_admitted(admission, job, lines, &CancellationToken::new()).await
    }

    /// Runs `job` in the slot `admission` holds. Console lines are also sent to
    /// `lines` as they happen, when given. When `cancel` fires, the execution stops
    /// at once (within an epoch tick, or at once when parked on host calls) and ends
    /// with the outcome `cancelled`.
    ///
    /// `Err` means the job never ran (too large, or no CPU slot within the queue
    /// timeout); every fault of the code itself is an `Ok` outcome with `ok: false`
    /// and a typed error.
    pub async fn run_admitted(
        &self,
        admission: Admission,
        job: Job,
        lines: Option<LineSender>,
        cancel: &CancellationToken,
    ) -> Result<Outcome, Rejected> {
        if job.code.len() as u64 > job.limits.code_bytes {
            return Err(Rejected::TooLarge { size: job.code.len(), limit: job.limits.code_bytes });
        }
        let cpu = self.cpu_slot(cancel).await?;
        let (pre, keep) = match (job.language, &job.session) {
            (language, Some(_)) => match self.session_guest(language).await {
                Ok(session) => (session.guest.pre(), session.keeps_instances),
                Err(error) => {
                    cpu.release();
                    tracing::error!(%error, "cannot load the session guest");
                    return Err(Rejected::Internal(format!("the session guest cannot be loaded: {error}")));
                }
            },
            (Language::Python, None) => match self.python().await {
                Ok(guest) => (guest.pre(), false),
                Err(error) => {
                    cpu.release();
                    tracing::error!(%error, "cannot load the Python guest");
                    return Err(Rejected::Internal(format!("the Python guest cannot be loaded: {error}")));
                }
            },
            (Language::Javascript | Language::Typescript, None) => (self.javascript.pre(), false),
        };
        let execution_id = job.id.clone().unwrap_or_else(|| uuid::Uuid::now_v7().to_string().into());
        let outcome = self.run(&pre, keep, job, lines, cpu.clone(), execution_id, cancel, None).await;
        cpu.release();
        drop(admission);
        tracing::debug!(
            execution_id = %outcome.execution_id,
            outcome = outcome.error.as_ref().map_or("ok", |e| e.kind.as_str()),
            fuel = outcome.usage.fuel,
            wall_ms = outcome.usage.wall_ms,
            "execution finished"
        );
        Ok(outcome)
    }

    /// Goes on with a paused execution in the slot `admission` holds: its memory in
    /// a fresh instance of its guest, its held calls released as `resume.decisions`
    /// say, then the guest's `resume`. The outcome is the whole execution's (its
    /// console lines and usage from before the pause included), or another pause.
    /// `Err` as for [`Sandbox::run_admitted`].
    pub async fn resume(
        &self,
        admission: Admission,
        resume: Resume,
        lines: Option<LineSender>,
        cancel: &CancellationToken,
    ) -> Result<Outcome, Rejected> {
        let Resume { paused, decisions, doors, limits, id, trace } = resume;
        let cpu = self.cpu_slot(cancel).await?;
        let language = paused.language;
        let prepared = async {
            let session = self.session_guest(language).await?;
            let memory = MemoryFile::create(session.pristine.clone(), paused.memory.size, paused.memory.chunks())?;
            Ok::<_, anyhow::Error>((session.guest.pre(), memory))
        };
        let (pre, memory) = match prepared.await {
            Ok(prepared) => prepared,
            Err(error) => {
                cpu.release();
                tracing::error!(%error, "cannot make a paused execution's memory");
                return Err(Rejected::Internal(format!("the paused execution cannot be resumed: {error}")));
            }
        };
        let job = Job { doors, trace, id: Some(id.clone()), ..Job::new(String::new(), language, limits) };
        let resumed = Resumed {
            held: paused.held,
            door_calls: paused.door_calls,
            decisions,
            calls_started: paused.calls_started,
            fuel_used: paused.fuel_used,
            wall_ms: paused.wall_ms,
            output_used: paused.output_used,
            memory_peak: paused.memory_peak,
            logs: paused.logs,
            started_at_ms: paused.started_at_ms,
            memory: Arc::new(memory),
        };
        let outcome = self.run(&pre, false, job, lines, cpu.clone(), id, cancel, Some(resumed)).await;
        cpu.release();
        drop(admission);
        Ok(outcome)
    }

    /// A CPU slot, within the queue timeout (else `overloaded`) unless `cancel` fires
    /// first.
    async fn cpu_slot(&self, cancel: &CancellationToken) -> Result<CpuSlot, Rejected> {
        let cpu = CpuSlot::new(self.cpu.clone());
        tokio::select! {
            acquired = tokio::time::timeout(self.config.queue_timeout, cpu.acquire()) => match acquired {
                Ok(()) => Ok(cpu),
                Err(_) => Err(Rejected::Overloaded { retry_after_secs: 1 }),
            },
            () = cancel.cancelled() => Err(Rejected::Cancelled),
        }
    }

    #[allow(clippy::too_many_arguments)]
    async fn run(
        &self,
        pre: &InstancePre<HostState>,
        keep: bool,
        job: Job,
        lines: Option<LineSender>,
        cpu: CpuSlot,
        execution_id: Arc<str>,
        cancel: &CancellationToken,
        resumed: Option<Resumed>,
    ) -> Outcome {
        let limits = job.limits;
        let preparing = match job.language {
            Language::Typescript if resumed.is_none() => Some(prepare_limits(&limits, job.code.len())),
            _ => None,
        };

        let input = match &job.input {
            Some(value) => serde_json::to_string(value).unwrap_or_default(),
            None => String::new(),
        };
        let state = HostState::new(HostSetup {
            limits,
            code: job.code,
            input,
            language: job.language,
            preparing,
            lines,
            doors: job.doors,
            execution_id: execution_id.clone(),
            cpu: cpu.clone(),
            session: job.session.is_some(),
            trace: job.trace,
        });
        let mut state = state;
        // What a resumed execution used before it paused counts against its limits.
        let (mut before, mut mapped, mut entry) = (None, job.session.clone(), "run");
        if let Some(resumed) = resumed {
            state.calls_started = resumed.calls_started;
            state.held = resumed.held;
            state.door_calls = resumed.door_calls;
            state.console = console::Console::resumed(
                limits.output_bytes,
                state.console.take_stream(),
                resumed.logs,
                resumed.output_used,
            );
            state.fuel_granted = limits.fuel.saturating_sub(resumed.fuel_used);
            state.limiter.peak = resumed.memory_peak as usize;
            state.release(resumed.decisions);
            before = Some((resumed.fuel_used, resumed.wall_ms, resumed.started_at_ms));
            mapped = Some(resumed.memory);
            entry = "resume";
        }
        let (fuel_before, wall_before) = before.map_or((0, 0), |(fuel, wall, _)| (fuel, wall));
        // The instance the session's last execution here ran in, when it was kept and
        // is of this guest's code (not Winch's, once Cranelift's has replaced it), and
        // its memory is within this execution's limit (else a fresh instance refuses
        // the growth, as it would have).
        let warm = match (&mapped, entry) {
            (Some(file), "run") => file.take_kept().filter(|warm| {
                Module::same(&warm.module, pre.module()) && warm.memory.data_size(&warm.store) <= state.limiter.max
            }),
            _ => None,
        };
        let warm = match warm {
            Some(warm) => warm.ready().await,
            None => None,
        };
        let (mut store, mut tracker, warm) = match warm {
            Some((tracker, mut store, instance, memory)) => {
                let size = memory.data_size(&store);
                *store.data_mut() = state;
                store.data_mut().limiter.peak = size;
                (store, Some(tracker), Some((instance, memory)))
            }
            None => (Store::new(pre.module().engine(), state), None, None),
        };
        store.limiter(|state| &mut state.limiter);
        // Fuel can be set only when the engine consumes fuel, which ours always does.
        let _ = store.set_fuel(store.data().fuel_granted);
        let started = Instant::now();
        let started_at_ms = before.map_or_else(crate::time::now_ms, |(_, _, at)| at);
        let wall_left = limits.wall_ms.saturating_sub(wall_before).max(1);
        let deadline = started + Duration::from_millis(wall_left);
        store.set_epoch_deadline(1);
        store.epoch_deadline_callback(move |context| {
            if Instant::now() >= deadline {
                return Ok(UpdateDeadline::Interrupt);
            }
            let cpu = context.data().cpu.clone();
            Ok(UpdateDeadline::YieldCustom(1, Box::pin(async move { cpu.yield_slot().await })))
        });

        let session = job.session;
        let run = async {
            if let Some((instance, memory)) = warm {
                let entry = instance.get_typed_func::<(), ()>(&mut store, entry)?;
                entry.call_async(&mut store, ()).await?;
                return Ok::<_, wasmtime::Error>((instance, memory));
            }
            let instance = pre.instantiate_async(&mut store).await?;
            let memory = instance
                .get_memory(&mut store, "memory")
                .ok_or_else(|| wasmtime::Error::msg("the guest exports no memory"))?;
            if let Some(file) = &mapped {
                // Grown first (through the store's limiter, like any growth), then
                // the session's file mapped over it.
                let (size, current) = (file.size(), memory.data_size(&store) as u64);
                if size > current {
                    memory.grow(&mut store, (size - current).div_ceil(65_536))?;
                }
                // SAFETY: a fresh instance of the session engine (whose memories are
                // `MappedMemories`), its memory grown to the file's size; nothing
                // borrows it while the file is mapped.
                unsafe { file.map_over(memory.data_mut(&mut store)) }
                    .map_err(|e| wasmtime::Error::msg(format!("cannot map the session's memory: {e}")))?;
            }
            let entry = instance.get_typed_func::<(), ()>(&mut store, entry)?;
            entry.call_async(&mut store, ()).await?;
            Ok::<_, wasmtime::Error>((instance, memory))
        };
        // Dropping the guest's future stops it where it is; the store stays readable.
        let result = tokio::select! {
            result = tokio::time::timeout(Duration::from_millis(wall_left), run) => Some(result),
            () = cancel.cancelled() => None,
        };
        let wall_ms = wall_before + started.elapsed().as_millis() as u64;

        let fuel_left = store.get_fuel().unwrap_or(0);
        // The guest returned without an outcome, waiting on held calls: a pause.
        if let (Some(Ok(Ok((_, memory)))), None, false) = (&result, &store.data().outcome, store.data().held.is_empty())
        {
            let data = memory.data(&store);
            let pristine = match self.session_guest(job.language).await {
                Ok(guest) => guest.pristine.clone(),
                Err(error) => {
                    let error = ExecError::new(Kind::Internal, format!("the paused execution cannot be kept: {error}"));
                    let state = store.data_mut();
                    state.cancel_in_flight();
                    let usage = Usage {
                        fuel: fuel_before + state.fuel_granted.saturating_sub(fuel_left),
                        wall_ms,
                        memory_bytes: state.limiter.peak as u64,
                        host_calls: state.calls_started,
                        strip: state.strip_usage,
                    };
                    return finish(state, None, Some(error), usage, started_at_ms, execution_id);
                }
            };
            let pages = pristine.changed_pages(data);
            let image = MemoryImage::from_pages(data, &pages);
            let state = store.data_mut();
            let usage = Usage {
                fuel: fuel_before + state.fuel_granted.saturating_sub(fuel_left),
                wall_ms,
                memory_bytes: state.limiter.peak as u64,
                host_calls: state.calls_started,
                strip: state.strip_usage,
            };
            let held = std::mem::take(&mut state.held);
            let mut door_calls = state.door_calls.clone();
            for call in &held {
                let door = call.name.split_once('.').map_or(call.name.as_str(), |(door, _)| door);
                if let Some(count) = door_calls.get_mut(door) {
                    *count = count.saturating_sub(1);
                }
            }
            let paused = Paused {
                language: job.language,
                memory: image,
                held,
                calls_started: state.calls_started,
                door_calls,
                fuel_used: usage.fuel,
                wall_ms,
                output_used: state.console.used(),
                memory_peak: usage.memory_bytes,
                logs: state.console.lines.clone(),
                started_at_ms,
            };
            let mut outcome = finish(state, None, None, usage, started_at_ms, execution_id);
            outcome.ok = false;
            outcome.status = Some("paused");
            outcome.paused = Some(Box::new(paused));
            return outcome;
        }
        let state = store.data_mut();
        state.cancel_in_flight();
        let usage = |state: &HostState| Usage {
            fuel: fuel_before + state.fuel_granted.saturating_sub(fuel_left),
            wall_ms,
            memory_bytes: state.limiter.peak as u64,
            host_calls: state.calls_started,
            strip: state.strip_usage,
        };
        let error = match result {
            None => Some(ExecError::new(
                Kind::Cancelled,
                "the execution was cancelled: its caller went away or the server is shutting down",
            )),
            Some(Err(_elapsed)) => Some(timeout_error(limits.wall_ms)),
            Some(Ok(Ok((instance, memory)))) => match state.outcome.take() {
                Some(GuestOutcome::Value(value)) => {
                    let mut usage = usage(state);
                    let mut written = None;
                    let mut error = None;
                    // The pages to protect before the next execution (all, for a new
                    // tracker).
                    let mut protect = None;
                    if let Some(file) = &session {
                        let data = memory.data(&store);
                        let fuel_left = limits.fuel.saturating_sub(usage.fuel);
                        // A kept memory's pages are its own copies already: only the
                        // tracker (or comparing every page) can say which it wrote.
                        let scanned = tracker.as_mut().map(|tracker| tracker.written(data));
                        let found = match scanned {
                            Some(Ok(pages)) => {
                                protect = Some(pages.clone());
                                Ok((pages, Compared { fuel: 0, wall_ms: 0 }))
                            }
                            Some(Err(_)) => {
                                tracker = None;
                                compared_pages(file, data, fuel_left)
                            }
                            None => changed_pages(file, data, fuel_left),
                        };
                        match found {
                            Ok((pages, compared)) => {
                                file.written(&pages);
                                usage.fuel += compared.fuel;
                                usage.wall_ms += compared.wall_ms;
                                written = Some(MemoryImage::from_pages(data, &pages));
                                if tracker.is_none() && keep {
                                    tracker = mapped::WriteTracker::new(data).ok();
                                }
                            }
                            Err(failed) => error = Some(failed),
                        }
                    }
                    let state = store.data_mut();
                    if let Some(error) = error {
                        return finish(state, None, Some(error), usage, started_at_ms, execution_id);
                    }
                    let mut outcome = finish(state, Some(value), None, usage, started_at_ms, execution_id);
                    outcome.session_image = written;
                    if let (Some(file), Some(tracker)) = (&session, tracker) {
                        // The execution's state goes now (its doors, its console's
                        // stream); the instance stays with the memory.
                        *store.data_mut() = HostState::new(HostSetup {
                            limits,
                            code: String::new(),
                            input: String::new(),
                            language: job.language,
                            preparing: None,
                            lines: None,
                            doors: Doors::default(),
                            execution_id: Arc::from(""),
                            cpu: CpuSlot::new(self.cpu.clone()),
                            session: true,
                            trace: TraceContext::default(),
                        });
                        let tracker = match protect {
                            Some(pages) if pages.len() <= PROTECT_PAST => Tracking::Ready(tracker),
                            // Protecting pages flushes them from every core's TLB: done
                            // on a thread of its own, off the response's path.
                            protect => Tracking::Protecting(tokio::task::spawn_blocking(move || {
                                if let Err(error) = tracker.protect(protect.as_deref()) {
                                    // Pages left unprotected are listed again next
                                    // time: compared, never missed.
                                    tracing::debug!(%error, "cannot protect a kept session memory's pages");
                                }
                                tracker
                            })),
                        };
                        file.keep(Warm { tracker, store, instance, memory, module: pre.module().clone() });
                    }
                    return outcome;
                }
                Some(GuestOutcome::Failed(error)) => Some(error),
                None => Some(ExecError::new(Kind::Internal, "the guest ended without reporting an outcome")),
            },
            Some(Ok(Err(trap))) => Some(classify(state, &trap, limits)),
        };
        let usage = usage(state);
        finish(state, None, error, usage, started_at_ms, execution_id)
    }
}

/// Fuel charged for each page of a session's memory compared to find the pages an
/// execution wrote, where `/proc/self/pagemap` cannot say: comparing is about 8 ns a
/// byte here, which is what this much fuel buys, so a large session pays for it like
/// for any other work (it was 20 ms for 50 MiB, unmetered).
pub const FUEL_PER_COMPARED_PAGE: u64 = 32_768;

/// What finding an execution's written pages by comparing cost it.
struct Compared {
    fuel: u64,
    wall_ms: u64,
}

/// The pages of a session's memory `data` an execution wrote: read from the kernel's
/// page map when it can be, else found by comparing every page, which is charged to
/// the execution (fuel, within the `fuel_left` it has, and wall time). Over its fuel,
/// the execution ends `out_of_fuel` and the session stays as it was.
fn changed_pages(file: &MemoryFile, data: &[u8], fuel_left: u64) -> Result<(Vec<u32>, Compared), ExecError> {
    if let Ok(written) = mapped::written_pages(data) {
        return Ok((written, Compared { fuel: 0, wall_ms: 0 }));
    }
    compared_pages(file, data, fuel_left)
}

/// The pages of a session's memory `data` that differ from what `file` holds, found
/// by comparing every page, charged as [`changed_pages`] says.
fn compared_pages(file: &MemoryFile, data: &[u8], fuel_left: u64) -> Result<(Vec<u32>, Compared), ExecError> {
    let pages = (data.len() / 4096) as u64;
    let fuel = pages.saturating_mul(FUEL_PER_COMPARED_PAGE);
    if fuel > fuel_left {
        return Err(ExecError::new(
            Kind::OutOfFuel,
            format!(
                "finding which of the session's {pages} memory pages the execution changed takes {fuel} fuel, more \
                 than the {fuel_left} it had left; the session is as it was before this execution"
            ),
        ));
    }
    let started = Instant::now();
    let written = file.changed_pages(data).map_err(|error| {
        ExecError::new(Kind::Internal, format!("cannot read which pages the execution changed: {error}"))
    })?;
    Ok((written, Compared { fuel, wall_ms: started.elapsed().as_millis() as u64 }))
}

fn finish(
    state: &mut HostState,
    result: Option<Box<RawValue>>,
    error: Option<ExecError>,
    usage: Usage,
    started_at_ms: i64,
    execution_id: Arc<str>,
) -> Outcome {
    Outcome {
        ok: error.is_none(),
        result: if error.is_none() { result } else { None },
        logs: std::mem::take(&mut state.console.lines),
        error,
        status: None,
        approvals: Vec::new(),
        usage,
        execution_id: execution_id.to_string(),
        started_at_ms,
        calls: std::mem::take(&mut state.call_records),
        session_image: None,
        paused: None,
    }
}

fn timeout_error(wall_ms: u64) -> ExecError {
    ExecError::new(Kind::Timeout, format!("execution passed its wall-clock limit of {wall_ms} ms"))
}

/// Fuel the preparation phase may use per byte of code, on top of
/// [`PREPARE_FUEL_BASE`]. Stripping real TypeScript takes about half of this (800
/// per byte; see `cargo bench --bench typescript`); input that needs more is refused
/// as too complex. At the 256 KiB code limit the bound is about 410 million fuel,
/// which the slowest (allocation-heavy) stripping work measured burns in under 100 ms.
pub const PREPARE_FUEL_PER_BYTE: u64 = 1_500;
/// Fixed fuel allowance of the preparation phase.
pub const PREPARE_FUEL_BASE: u64 = 20_000_000;
/// Memory cap of the preparation phase (the guest's snapshot included).
pub const PREPARE_MEMORY_BYTES: u64 = 32 << 20;

/// The limits TypeScript stripping runs under: its own work bound (fuel and memory by
/// the code's length), or the execution's limits where those are lower.
pub(crate) fn prepare_limits(limits: &Limits, code_bytes: usize) -> host::Preparing {
    let bound = PREPARE_FUEL_BASE.saturating_add(PREPARE_FUEL_PER_BYTE.saturating_mul(code_bytes as u64));
    host::Preparing {
        fuel: bound.min(limits.fuel),
        fuel_is_bound: bound < limits.fuel,
        memory_bytes: PREPARE_MEMORY_BYTES.min(limits.memory_bytes) as usize,
        memory_is_bound: PREPARE_MEMORY_BYTES < limits.memory_bytes,
    }
}

/// Whether the guest's runtime ended it for an allocation it could not make: Rust
/// writes `memory allocation of N bytes failed` when the allocator refuses, and
/// panics with `capacity overflow` for a request larger than a 32-bit guest can
/// address (`[0] * 10**9` in Python), before the allocator, and so the memory limit,
/// ever sees it. Only the guest's runtime writes to its standard error (the code's
/// output goes to the console), so the code cannot claim this.
fn allocation_failed(diagnostics: &[u8]) -> bool {
    let text = String::from_utf8_lossy(diagnostics);
    let mut lines = text.lines().map(str::trim);
    let failed_allocation = |line: &str| {
        line.strip_prefix("memory allocation of ")
            .and_then(|rest| rest.strip_suffix(" bytes failed"))
            .is_some_and(|bytes| !bytes.is_empty() && bytes.bytes().all(|b| b.is_ascii_digit()))
    };
    let mut panicked = false;
    lines.any(|line| {
        let overflow = panicked && line == "capacity overflow";
        panicked = line.contains("panicked at");
        overflow || failed_allocation(line)
    })
}

/// Names the cause of a trap: a limit the host enforced, or the engine's own trap.
fn classify(state: &mut HostState, error: &wasmtime::Error, limits: Limits) -> ExecError {
    if let Some(hit) = state.limit_hit.take() {
        return hit;
    }
    if let Some(phase) = state.preparing {
        // Stripping TypeScript passed a bound of its own: the code is too complex to
        // turn into JavaScript, which the caller can fix, so it is a `syntax` error.
        let refused = |why: String| {
            ExecError::new(Kind::Syntax, format!("the TypeScript could not be stripped of its types: {why}"))
        };
        match error.downcast_ref::<Trap>() {
            Some(Trap::OutOfFuel) if phase.fuel_is_bound => {
                return refused(format!(
                    "it needs more than the work bound of {} fuel for {} bytes of code; \
                     simplify deeply nested or ambiguous type syntax",
                    phase.fuel, state.code_bytes
                ))
            }
            Some(Trap::StackOverflow | Trap::MemoryOutOfBounds) => return refused("it is nested too deeply".into()),
            _ if state.limiter.exceeded && phase.memory_is_bound => {
                return refused(format!("it needs more than the memory bound of {} bytes", phase.memory_bytes))
            }
            _ => {}
        }
    }
    if state.limiter.exceeded {
        return ExecError::new(
            Kind::OutOfMemory,
            format!("execution passed its memory limit of {} bytes", limits.memory_bytes),
        );
    }
    match error.downcast_ref::<Trap>() {
        Some(Trap::OutOfFuel) => {
            ExecError::new(Kind::OutOfFuel, format!("execution used all of its {} fuel", limits.fuel))
        }
        Some(Trap::StackOverflow) => ExecError::new(Kind::StackOverflow, "the guest's stack overflowed"),
        // The guest's shadow stack sits at the bottom of its memory, so running past
        // it is an access below address 0.
        Some(Trap::MemoryOutOfBounds) => {
            ExecError::new(Kind::StackOverflow, "the guest's stack overflowed (past the bottom of its memory)")
        }
        Some(Trap::Interrupt) => timeout_error(limits.wall_ms),
        _ if allocation_failed(&state.wasi.diagnostics) => ExecError::new(
            Kind::OutOfMemory,
            format!(
                "the code asked for more memory at once than the guest can address; its memory limit is {} bytes",
                limits.memory_bytes
            ),
        ),
        _ => {
            let diagnostics = String::from_utf8_lossy(&state.wasi.diagnostics).trim().to_string();
            let mut message = format!("the guest faulted: {error}");
            if !diagnostics.is_empty() {
                message.push_str(&format!(" ({diagnostics})"));
            }
            tracing::error!(%message, "guest fault");
            ExecError::new(Kind::Internal, message)
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn allocation_failures_are_read_from_the_runtimes_own_words() {
        let panic = b"thread '<unnamed>' (1) panicked at /rustc/abc/library/alloc/src/raw_vec/mod.rs:28:5:\ncapacity overflow\n";
        assert!(super::allocation_failed(panic));
        assert!(super::allocation_failed(b"memory allocation of 8000000000 bytes failed\n"));
        assert!(!super::allocation_failed(b"capacity overflow\n"), "only as a panic's message");
        assert!(!super::allocation_failed(b"memory allocation of many bytes failed"));
        assert!(!super::allocation_failed(b"thread panicked at src/lib.rs:1:1:\nindex out of bounds\n"));
    }
}
