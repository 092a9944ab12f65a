//! The one wasmtime `Engine` per process, and the guest module compiled once.
//!
//! Engine choices and why:
//! - pooling allocator: instances, memories, tables and fiber stacks come from
//!   pre-reserved slots, so instantiation is a few microseconds;
//! - copy-on-write memory images (wasmtime's default): the pre-initialised heap is
//!   mapped, not copied, and only pages an execution touches cost memory;
//! - fuel for CPU, epochs for wall clock and for yielding to the async runtime;
//! - no wasm backtraces: guest errors come from QuickJS with JavaScript positions;
//! - Cranelift's optimised code, with Winch's quickly compiled code serving the first
//!   executions while Cranelift compiles on an empty cache (see [`Compiler`]).
//!
//! The compiled module is cached on disk under a name that joins the guest's
//! SHA-256 with the engine's compatibility hash (wasmtime version and settings), so a
//! new guest or a new wasmtime never loads a stale artifact; a file that fails to
//! load is recompiled and replaced. Files are written to a temporary name and
//! renamed, so a reader never sees a half-written artifact.

use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::time::Duration;

use sha2::{Digest, Sha256};
use wasmtime::{
    Config, Enabled, Engine, InstanceAllocationStrategy, Module, OptLevel, PoolingAllocationConfig, Strategy,
};

/// The pre-initialised guest, built from `guest/` (see the README's "Guest").
pub static GUEST_WASM: &[u8] = include_bytes!("../../guest/sandgate_guest.wasm");

/// The pre-initialised Python guest (Monty), built from `guest/python/`.
pub static PYTHON_WASM: &[u8] = include_bytes!("../../guest/sandgate_python.wasm");

/// Time between epoch ticks: the granularity of wall-clock limits and of yielding.
pub const EPOCH_TICK: Duration = Duration::from_millis(2);

/// The native stack guest code may use. Deep JavaScript recursion must meet QuickJS's
/// own check first (see [`base_config`]); Winch's frames are larger than Cranelift's,
/// and this leaves room for both.
const WASM_STACK: usize = 16 << 20;

/// Bytes of each linear memory kept resident between executions in a pool slot.
const KEEP_RESIDENT_BYTES: usize = 16 << 20;

/// Bytes of each table kept resident (reset with a write, not unmapped) between
/// executions in a pool slot: the guests' tables are a few thousand elements.
const TABLE_KEEP_RESIDENT_BYTES: usize = 256 << 10;

/// Slots whose memory is given back to the kernel together, so the TLB flushes those
/// decommits cost are shared by the batch.
const DECOMMIT_BATCH: usize = 16;

/// Which compiler makes the guests' machine code (`[sandbox] compiler`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Compiler {
    /// Cranelift's optimised code from the compile cache, or, when the cache does not
    /// hold it yet, Winch's baseline code (compiled in a tenth of the time) while
    /// Cranelift compiles in the background; executions move to the optimised code as
    /// soon as it is ready.
    #[default]
    Tiered,
    /// Cranelift's code only: on an empty cache, the first execution waits for it.
    Optimizing,
    /// Winch's code only: quick to compile, two to three times slower to run.
    Baseline,
}

/// Engine-wide settings, fixed for the life of the process.
#[derive(Clone, Debug)]
pub struct EngineSettings {
    /// Upper bound on any execution's memory limit; sizes the pooled memory slots.
    pub max_memory_bytes: u64,
    /// Executions that may exist at once; sizes the pools.
    pub max_instances: u32,
}

/// Builds the engine. Fails only if the host cannot reserve the pools.
pub fn build_engine(settings: &EngineSettings) -> anyhow::Result<Engine> {
    let mut pool = PoolingAllocationConfig::default();
    pool.total_core_instances(settings.max_instances)
        .total_memories(settings.max_instances)
        .total_tables(settings.max_instances)
        .total_stacks(settings.max_instances)
        .total_component_instances(0)
        .max_memory_size(settings.max_memory_bytes as usize)
        .table_elements(20_000)
        // Reset only the pages an execution dirtied (found with PAGEMAP_SCAN where the
        // kernel has it) and keep them mapped, so the next execution in the slot takes
        // no page faults on them; elsewhere wasmtime falls back to madvise.
        .pagemap_scan(Enabled::Auto)
        .linear_memory_keep_resident(KEEP_RESIDENT_BYTES)
        .table_keep_resident(TABLE_KEEP_RESIDENT_BYTES)
        .decommit_batch_size(DECOMMIT_BATCH)
        .async_stack_keep_resident(256 << 10);
    let mut config = base_config(Strategy::Cranelift);
    config.allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
    // Table elements initialised on their first call (wasmtime's default), not when
    // the instance is made: filling all of the JavaScript guest's 701 elements took a
    // lookup of two code addresses each and was about a fifth of the server's CPU
    // under load, while a trivial execution calls through a few dozen. The table
    // stays resident in its slot (`table_keep_resident`, reset by a write), so a
    // first call's write takes no page fault and no TLB flush.
    config.table_lazy_init(true);
    Engine::new(&config).map_err(|e| anyhow::anyhow!("cannot create the wasm engine: {e}"))
}

/// Builds an engine session executions run on, compiling with `strategy`: the same
/// settings, but linear memories from [`super::mapped::MappedMemories`] (allocated on
/// demand, not pooled), so a session's memory can be mapped from its file instead of
/// copied.
pub fn build_session_engine(strategy: Strategy) -> anyhow::Result<Engine> {
    let mut config = base_config(strategy);
    config
        .with_host_memory(std::sync::Arc::new(super::mapped::MappedMemories))
        .memory_may_move(false)
        .allocation_strategy(InstanceAllocationStrategy::OnDemand);
    Engine::new(&config).map_err(|e| anyhow::anyhow!("cannot create the session wasm engine: {e}"))
}

/// Builds the engine compiling fresh executions' guests with Winch, for the baseline
/// tier. Its instances are allocated on demand: it serves only the first executions
/// after a start on an empty cache, or every execution when `[sandbox] compiler =
/// "baseline"`.
pub fn build_baseline_engine() -> anyhow::Result<Engine> {
    let mut config = base_config(Strategy::Winch);
    config.allocation_strategy(InstanceAllocationStrategy::OnDemand);
    Engine::new(&config).map_err(|e| anyhow::anyhow!("cannot create the baseline wasm engine: {e}"))
}

/// Settings every engine shares.
fn base_config(strategy: Strategy) -> Config {
    let mut config = Config::new();
    config
        .strategy(strategy)
        .consume_fuel(true)
        .epoch_interruption(true)
        // Deep JavaScript recursion ends at QuickJS's own check on the guest's 2 MiB
        // shadow stack (a catchable RangeError, about 4,500 frames of a small
        // function); this native stack is sized so that limit always comes first,
        // with room for native built-ins (Array.prototype.map, JSON) in between.
        .max_wasm_stack(WASM_STACK)
        .async_stack_size(WASM_STACK + (1 << 20))
        .wasm_backtrace_max_frames(None)
        // No wasm-offset address maps: guest positions come from QuickJS, and the
        // smaller artifact compiles and loads faster.
        .generate_address_map(false)
        .cranelift_opt_level(OptLevel::Speed);
    config
}

/// Starts the process-wide epoch ticker for `engine`; it stops when the engine is
/// dropped.
pub fn start_ticker(engine: &Engine) {
    let weak = engine.weak();
    std::thread::Builder::new()
        .name("sandgate-epoch".into())
        .spawn(move || loop {
            std::thread::sleep(EPOCH_TICK);
            match weak.upgrade() {
                Some(engine) => engine.increment_epoch(),
                None => return,
            }
        })
        .expect("spawning the epoch ticker thread");
}

/// Where compiled artifacts go when the configuration names no directory:
/// `$XDG_CACHE_HOME/sandgate`, else `$HOME/.cache/sandgate`, else the temp dir.
pub fn default_cache_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("XDG_CACHE_HOME").filter(|d| !d.is_empty()) {
        return PathBuf::from(dir).join("sandgate");
    }
    if let Some(home) = std::env::var_os("HOME").filter(|d| !d.is_empty()) {
        return PathBuf::from(home).join(".cache").join("sandgate");
    }
    std::env::temp_dir().join("sandgate")
}

/// The artifact file name for `wasm` compiled by `engine`.
pub fn artifact_name(engine: &Engine, wasm: &[u8]) -> String {
    let guest = Sha256::digest(wasm);
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    engine.precompile_compatibility_hash().hash(&mut hasher);
    let guest_hex: String = guest.iter().take(12).map(|b| format!("{b:02x}")).collect();
    format!("guest-{guest_hex}-{:016x}.cwasm", hasher.finish())
}

/// The guest module from the cache, when a valid artifact for `engine` is there. Cache
/// trouble is logged, never fatal: the caller compiles instead.
pub fn cached_module(engine: &Engine, wasm: &[u8], cache_dir: Option<&Path>) -> Option<Module> {
    let path = cache_dir?.join(artifact_name(engine, wasm));
    if path.exists() {
        // SAFETY: the file was written by `store_artifact` below from `Module::serialize`
        // of this exact guest on an engine with this compatibility hash (both are in its
        // name); wasmtime checks the header and engine settings again and we fall back
        // to compiling on any error.
        match unsafe { Module::deserialize_file(engine, &path) } {
            Ok(module) => {
                tracing::debug!(path = %path.display(), "loaded compiled guest from cache");
                return Some(module);
            }
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "cached guest unusable; recompiling")
            }
        }
    }
    None
}

/// Compiles the guest module and writes its artifact to the cache, if there is one.
pub fn compile_and_cache(engine: &Engine, wasm: &[u8], cache_dir: Option<&Path>) -> anyhow::Result<Module> {
    let module = compile(engine, wasm)?;
    if let Some(dir) = cache_dir {
        let path = dir.join(artifact_name(engine, wasm));
        if let Err(e) = store_artifact(&module, dir, &path) {
            tracing::warn!(path = %path.display(), error = %e, "could not cache the compiled guest");
        }
    }
    Ok(module)
}

pub(crate) fn compile(engine: &Engine, wasm: &[u8]) -> anyhow::Result<Module> {
    let started = std::time::Instant::now();
    let module = Module::new(engine, wasm).map_err(|e| anyhow::anyhow!("cannot compile the guest: {e}"))?;
    tracing::info!(elapsed_ms = started.elapsed().as_millis() as u64, "compiled the guest");
    Ok(module)
}

fn store_artifact(module: &Module, dir: &Path, path: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir)?;
    let bytes = module.serialize().map_err(|e| anyhow::anyhow!("{e}"))?;
    let tmp = dir.join(format!(".{}.{}.tmp", std::process::id(), uuid::Uuid::now_v7()));
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, path).inspect_err(|_| {
        let _ = std::fs::remove_file(&tmp);
    })?;
    Ok(())
}
