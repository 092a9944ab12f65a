//! The guest's whole view of WASI preview 1: nine functions, granted here and nowhere
//! else.
//!
//! A general WASI implementation offers files, sockets, environment and arguments and
//! then asks to have them switched off; this shim grants only what the C and Rust
//! runtimes inside the guest call, so the surface can be read in one screen:
//!
//! | function | what the guest gets |
//! |---|---|
//! | `random_get` | OS randomness (reseeds `Math.random` each run) |
//! | `clock_time_get` | the real and monotonic clocks (`Date.now()`) |
//! | `environ_sizes_get`, `environ_get` | an empty environment |
//! | `fd_write` | fds 1 and 2 only, into a small bounded buffer kept for diagnostics |
//! | `fd_fdstat_get` | fds 0–2 described as character devices; nothing else exists |
//! | `fd_seek`, `fd_close` | `EBADF` / `ESPIPE`: there is nothing to seek or close |
//! | `proc_exit` | ends the run |
//!
//! Every other WASI function is absent, so a module importing one fails to
//! instantiate instead of gaining a capability by accident.

use wasmtime::{Caller, Extern, Linker, Memory};

const MODULE: &str = "wasi_snapshot_preview1";
const ERRNO_SUCCESS: i32 = 0;
const ERRNO_BADF: i32 = 8;
const ERRNO_FAULT: i32 = 21;
const ERRNO_INVAL: i32 = 28;
const ERRNO_SPIPE: i32 = 70;

/// Bytes of guest stdout/stderr kept for diagnostics; the rest is counted and dropped.
pub const DIAGNOSTIC_BYTES: usize = 4096;

/// Where the shim's clock and randomness come from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Entropy {
    /// Real clocks and OS randomness: every execution.
    Live,
    /// Clocks at zero and zeroed randomness: build-time pre-initialisation, so the
    /// snapshot is reproducible byte for byte.
    Fixed,
}

/// Per-store state of the shim.
#[derive(Debug)]
pub struct WasiState {
    entropy: Entropy,
    memory: Option<Memory>,
    started: std::time::Instant,
    /// What the guest wrote to stdout/stderr, capped at [`DIAGNOSTIC_BYTES`].
    pub diagnostics: Vec<u8>,
}

impl WasiState {
    pub fn new(entropy: Entropy) -> Self {
        Self { entropy, memory: None, started: std::time::Instant::now(), diagnostics: Vec::new() }
    }
}

/// Access to the shim's state inside a store's data.
pub trait HasWasi: Send + 'static {
    fn wasi(&mut self) -> &mut WasiState;
}

pub(crate) fn memory<T: HasWasi>(caller: &mut Caller<'_, T>) -> Option<Memory> {
    if let Some(memory) = caller.data_mut().wasi().memory {
        return Some(memory);
    }
    let memory = match caller.get_export("memory") {
        Some(Extern::Memory(memory)) => memory,
        _ => return None,
    };
    caller.data_mut().wasi().memory = Some(memory);
    Some(memory)
}

fn write_bytes<T: HasWasi>(caller: &mut Caller<'_, T>, ptr: i32, bytes: &[u8]) -> i32 {
    let Some(memory) = memory(caller) else {
        return ERRNO_FAULT;
    };
    match memory.write(&mut *caller, ptr as u32 as usize, bytes) {
        Ok(()) => ERRNO_SUCCESS,
        Err(_) => ERRNO_FAULT,
    }
}

fn read_u32(data: &[u8], at: usize) -> Option<u32> {
    data.get(at..at + 4).map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
}

/// Adds the shim to `linker`.
pub fn add_to_linker<T: HasWasi>(linker: &mut Linker<T>) -> wasmtime::Result<()> {
    linker.func_wrap(MODULE, "random_get", |mut caller: Caller<'_, T>, ptr: i32, len: i32| -> i32 {
        let mut buf = vec![0u8; len.max(0) as usize];
        if caller.data_mut().wasi().entropy == Entropy::Live && getrandom::fill(&mut buf).is_err() {
            return ERRNO_FAULT;
        }
        write_bytes(&mut caller, ptr, &buf)
    })?;
    linker.func_wrap(
        MODULE,
        "clock_time_get",
        |mut caller: Caller<'_, T>, id: i32, _precision: i64, out: i32| -> i32 {
            let live = caller.data_mut().wasi().entropy == Entropy::Live;
            let nanos: u64 = match (id, live) {
                (0..=3, false) => 0,
                // realtime
                (0, true) => std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_nanos() as u64)
                    .unwrap_or(0),
                // monotonic, process and thread CPU time: time since the store began
                (1..=3, true) => caller.data_mut().wasi().started.elapsed().as_nanos() as u64,
                _ => return ERRNO_INVAL,
            };
            write_bytes(&mut caller, out, &nanos.to_le_bytes())
        },
    )?;
    linker.func_wrap(MODULE, "environ_sizes_get", |mut caller: Caller<'_, T>, count: i32, size: i32| -> i32 {
        let first = write_bytes(&mut caller, count, &0u32.to_le_bytes());
        if first != ERRNO_SUCCESS {
            return first;
        }
        write_bytes(&mut caller, size, &0u32.to_le_bytes())
    })?;
    linker.func_wrap(MODULE, "environ_get", |_: Caller<'_, T>, _environ: i32, _buf: i32| -> i32 { ERRNO_SUCCESS })?;
    linker.func_wrap(
        MODULE,
        "fd_write",
        |mut caller: Caller<'_, T>, fd: i32, iovs: i32, iovs_len: i32, nwritten: i32| -> i32 {
            if fd != 1 && fd != 2 {
                return ERRNO_BADF;
            }
            let Some(memory) = memory(&mut caller) else {
                return ERRNO_FAULT;
            };
            let (data, state) = memory.data_and_store_mut(&mut caller);
            let mut total: u32 = 0;
            for i in 0..iovs_len.max(0) as usize {
                let at = iovs as u32 as usize + i * 8;
                let (Some(ptr), Some(len)) = (read_u32(data, at), read_u32(data, at + 4)) else {
                    return ERRNO_FAULT;
                };
                let Some(bytes) = data.get(ptr as usize..ptr as usize + len as usize) else {
                    return ERRNO_FAULT;
                };
                let kept = &mut state.wasi().diagnostics;
                let room = DIAGNOSTIC_BYTES.saturating_sub(kept.len());
                kept.extend_from_slice(&bytes[..bytes.len().min(room)]);
                total = total.saturating_add(len);
            }
            write_bytes(&mut caller, nwritten, &total.to_le_bytes())
        },
    )?;
    linker.func_wrap(MODULE, "fd_fdstat_get", |mut caller: Caller<'_, T>, fd: i32, out: i32| -> i32 {
        if !(0..=2).contains(&fd) {
            return ERRNO_BADF;
        }
        // fdstat: filetype u8 (2 = character device), flags u16, rights u64 × 2.
        let mut stat = [0u8; 24];
        stat[0] = 2;
        write_bytes(&mut caller, out, &stat)
    })?;
    linker.func_wrap(MODULE, "fd_seek", |_: Caller<'_, T>, fd: i32, _offset: i64, _whence: i32, _out: i32| -> i32 {
        if (0..=2).contains(&fd) {
            ERRNO_SPIPE
        } else {
            ERRNO_BADF
        }
    })?;
    linker.func_wrap(MODULE, "fd_close", |_: Caller<'_, T>, _fd: i32| -> i32 { ERRNO_BADF })?;
    linker.func_wrap(MODULE, "proc_exit", |_: Caller<'_, T>, code: i32| -> wasmtime::Result<()> {
        Err(wasmtime::format_err!("guest exited with status {code}"))
    })?;
    Ok(())
}
