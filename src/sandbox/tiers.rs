//! Guests compiled in two tiers: Winch's code at once, Cranelift's when it is ready.
//!
//! Cranelift's code runs the guests' interpreters about twice as fast as Winch's, but
//! compiling them takes it seconds of both cores (about 1.1 s for JavaScript and 2.9 s
//! for Python on the development machine), against a tenth of that for Winch. The
//! optimised code is cached on disk (see [`engine::cached_module`]), so only the first
//! start after installing or upgrading has to make it. With [`Compiler::Tiered`] that
//! start does not wait for it: when the cache does not hold a guest's optimised code,
//! the guest is compiled by Winch and serves executions at once, while Cranelift
//! compiles it on a thread of its own, writes the artifact and takes over for every
//! execution that starts after.
//!
//! Both tiers compile the same module with the same settings: the same fuel cost for
//! each operator, bulk memory operations charged by the byte on both (see
//! [`metered`]), the same native stack, the same memory and host functions. So an
//! execution's result, the fuel it used and the limits it meets do not depend on the
//! tier that ran it, and a session's memory or a paused execution taken on one tier
//! goes on on the other (`tests/all/tiers.rs` checks each).

use std::borrow::Cow;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError, RwLock};
use std::thread::JoinHandle;

use wasmtime::{Engine, InstancePre, Linker, Module, Strategy};

use super::engine::{self, Compiler};
use super::host::{self, HostState};
use super::metered;
use super::wasi;

/// An engine with the host functions linked.
pub(crate) struct Linked {
    pub engine: Engine,
    pub linker: Linker<HostState>,
}

impl Linked {
    /// Links the WASI shim and the `sandgate_v1` ABI on `engine`, and starts its epoch
    /// ticker.
    fn new(engine: Engine) -> anyhow::Result<Self> {
        engine::start_ticker(&engine);
        let mut linker: Linker<HostState> = Linker::new(&engine);
        wasi::add_to_linker(&mut linker).map_err(|e| anyhow::anyhow!("{e}"))?;
        host::add_to_linker(&mut linker).map_err(|e| anyhow::anyhow!("{e}"))?;
        metered::add_to_linker(&mut linker).map_err(|e| anyhow::anyhow!("{e}"))?;
        Ok(Self { engine, linker })
    }

    fn link(&self, module: &Module) -> anyhow::Result<InstancePre<HostState>> {
        self.linker.instantiate_pre(module).map_err(|e| anyhow::anyhow!("cannot link the guest: {e}"))
    }
}

/// Makes an engine.
type MakeEngine = Box<dyn Fn() -> anyhow::Result<Engine> + Send + Sync>;

/// The two engines one kind of execution (fresh, or in a session) runs on, each made
/// when first needed.
pub(crate) struct Engines {
    optimizing: OnceLock<Linked>,
    baseline: OnceLock<Linked>,
    make_optimizing: MakeEngine,
    make_baseline: MakeEngine,
}

impl Engines {
    /// Fresh executions' engines: `optimizing` (pooled) makes the optimising one.
    pub fn fresh(optimizing: impl Fn() -> anyhow::Result<Engine> + Send + Sync + 'static) -> Self {
        Self::new(Box::new(optimizing), Box::new(engine::build_baseline_engine))
    }

    /// Session executions' engines (their memories mapped from files).
    pub fn session() -> Self {
        Self::new(
            Box::new(|| engine::build_session_engine(Strategy::Cranelift)),
            Box::new(|| engine::build_session_engine(Strategy::Winch)),
        )
    }

    fn new(make_optimizing: MakeEngine, make_baseline: MakeEngine) -> Self {
        Self { optimizing: OnceLock::new(), baseline: OnceLock::new(), make_optimizing, make_baseline }
    }

    fn optimizing(&self) -> anyhow::Result<&Linked> {
        get_or_make(&self.optimizing, || Linked::new((self.make_optimizing)()?))
    }

    fn baseline(&self) -> anyhow::Result<&Linked> {
        get_or_make(&self.baseline, || Linked::new((self.make_baseline)()?))
    }

    /// `wasm` compiled as `compiler` says and linked. With [`Compiler::Tiered`] and no
    /// optimised code in `cache`, the guest returned runs Winch's code, and a thread
    /// added to `background` compiles Cranelift's and puts it in its place.
    pub fn load(
        &self,
        wasm: Cow<'static, [u8]>,
        compiler: Compiler,
        cache: Option<PathBuf>,
        background: &Background,
    ) -> anyhow::Result<Arc<Guest>> {
        if compiler == Compiler::Baseline {
            let baseline = self.baseline()?;
            return Ok(Guest::new(baseline.link(&compile_baseline(&baseline.engine, &wasm)?)?, false));
        }
        let optimizing = self.optimizing()?;
        if let Some(module) = engine::cached_module(&optimizing.engine, &wasm, cache.as_deref()) {
            return Ok(Guest::new(optimizing.link(&module)?, true));
        }
        if compiler == Compiler::Optimizing {
            let module = engine::compile_and_cache(&optimizing.engine, &wasm, cache.as_deref())?;
            return Ok(Guest::new(optimizing.link(&module)?, true));
        }
        let baseline = self.baseline()?;
        let guest = Guest::new(baseline.link(&compile_baseline(&baseline.engine, &wasm)?)?, false);
        tracing::info!("serving the guest with Winch's code while Cranelift compiles it");
        let (engine, linker, tiered) = (optimizing.engine.clone(), optimizing.linker.clone(), guest.clone());
        let upgrade = move || {
            let module = engine::compile_and_cache(&engine, &wasm, cache.as_deref())?;
            let pre = Linked { engine, linker }.link(&module)?;
            *tiered.current.write().unwrap_or_else(PoisonError::into_inner) = pre;
            tiered.optimized.store(true, Ordering::Release);
            Ok::<_, anyhow::Error>(())
        };
        let handle = std::thread::Builder::new().name("sandgate-compile".into()).spawn(move || {
            let upgraded = match background_pool() {
                Some(pool) => pool.install(upgrade),
                None => upgrade(),
            };
            match upgraded {
                Ok(()) => tracing::info!("the guest now runs Cranelift's optimised code"),
                Err(error) => {
                    tracing::error!(%error, "cannot compile the guest's optimised code; Winch's stays in use")
                }
            }
        })?;
        background.0.lock().unwrap_or_else(PoisonError::into_inner).push(handle);
        Ok(guest)
    }
}

/// The threads Cranelift compiles on in the background: a pool of their own, one per
/// core. In the process-wide pool, Winch's compiles (a Python or session guest's first
/// use) would queue behind them: a first Python execution took 1.5 s instead of 0.5–0.9
/// s, a first session execution 3.5 s instead of 0.2–0.4 s. They run at the same
/// priority as executions: at a lower one (nice 10), a server under full load from its
/// start served Winch's slower code for much longer than the 3.7 s it takes at an
/// equal share. `None` if the threads cannot start: the compile then runs on the
/// thread that asked, in the process-wide pool.
fn background_pool() -> Option<&'static rayon::ThreadPool> {
    static POOL: OnceLock<Option<rayon::ThreadPool>> = OnceLock::new();
    let pool = POOL.get_or_init(|| {
        rayon::ThreadPoolBuilder::new()
            .num_threads(std::thread::available_parallelism().map_or(2, |n| n.get()))
            .thread_name(|i| format!("sandgate-compile-{i}"))
            .build()
            .inspect_err(|error| tracing::warn!(%error, "cannot start the background compile threads"))
            .ok()
    });
    pool.as_ref()
}

/// `wasm` compiled by Winch, its bulk memory operations charged by the byte as
/// Cranelift's code charges them (see [`metered`]). Never cached: the next start
/// finds Cranelift's code in the cache.
fn compile_baseline(engine: &Engine, wasm: &[u8]) -> anyhow::Result<Module> {
    engine::compile(engine, &metered::metered(wasm)?)
}

/// `cell`'s value, made by `make` if it has none yet (two racing callers may both
/// make one; the first kept wins).
fn get_or_make<T>(cell: &OnceLock<T>, make: impl FnOnce() -> anyhow::Result<T>) -> anyhow::Result<&T> {
    if let Some(value) = cell.get() {
        return Ok(value);
    }
    let value = make()?;
    Ok(cell.get_or_init(|| value))
}

/// A compiled, linked guest: Winch's code until Cranelift's replaces it, or either
/// alone.
pub(crate) struct Guest {
    current: RwLock<InstancePre<HostState>>,
    optimized: AtomicBool,
}

impl Guest {
    fn new(pre: InstancePre<HostState>, optimized: bool) -> Arc<Self> {
        Arc::new(Self { current: RwLock::new(pre), optimized: AtomicBool::new(optimized) })
    }

    /// Whether it runs Cranelift's optimised code (else Winch's).
    pub fn optimized(&self) -> bool {
        self.optimized.load(Ordering::Acquire)
    }

    /// The code an execution starting now runs.
    pub fn pre(&self) -> InstancePre<HostState> {
        self.current.read().unwrap_or_else(PoisonError::into_inner).clone()
    }
}

/// The threads compiling optimised code in the background.
#[derive(Default)]
pub(crate) struct Background(Mutex<Vec<JoinHandle<()>>>);

impl Background {
    /// Waits until every compile started so far has finished (and written its
    /// artifact to the cache).
    pub fn settle(&self) {
        loop {
            let handles = std::mem::take(&mut *self.0.lock().unwrap_or_else(PoisonError::into_inner));
            if handles.is_empty() {
                return;
            }
            for handle in handles {
                let _ = handle.join();
            }
        }
    }
}
