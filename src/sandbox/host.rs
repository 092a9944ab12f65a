//! The host side of the guest ABI (`sandgate_v1`, documented in the guest crate) and
//! the per-execution state it works on.
//!
//! Each import is linked by a function of its own below ([`add_to_linker`] lists them).
//! Host calls are asynchronous: `call` starts a call through one of the execution's
//! doors ([`super::door`]) and returns an id at once; the guest keeps running and,
//! when its job queue is empty, calls `wait`, which parks the execution (giving up its
//! CPU slot and burning no fuel) until the first call in flight completes.
//! `Promise.all` over several calls thus takes the longest of their latencies, not the
//! sum.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use futures::future::BoxFuture;
use futures::stream::{FuturesUnordered, StreamExt};
use serde::Deserialize;
use serde_json::value::RawValue;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use wasmtime::{Caller, Linker, ResourceLimiter};

use super::console::{Console, LineSender, LogLevel};
use super::door::{Call, Doors, Hold, Pending, Started};
use super::error::ExecError;
use super::wasi::{self, HasWasi, WasiState};
use crate::error::Kind;
use crate::limits::Limits;
use crate::request::{Language, TraceContext};
use crate::time::now_ms;

const MODULE: &str = "sandgate_v1";
/// Longest call name accepted (`tools.<server>.<tool>`).
const MAX_CALL_NAME: usize = 512;

/// A CPU slot: an execution holds one while guest code runs and gives it up while it
/// waits on host calls or at each epoch tick, so a full server queues work instead of
/// slowing every execution down.
#[derive(Clone)]
pub(crate) struct CpuSlot {
    slots: Arc<Semaphore>,
    held: Arc<Mutex<Option<OwnedSemaphorePermit>>>,
}

impl CpuSlot {
    pub(crate) fn new(slots: Arc<Semaphore>) -> Self {
        Self { slots, held: Arc::new(Mutex::new(None)) }
    }

    pub(crate) async fn acquire(&self) {
        // The semaphore is owned by the sandbox and never closed.
        if let Ok(permit) = self.slots.clone().acquire_owned().await {
            *self.held.lock().unwrap_or_else(|e| e.into_inner()) = Some(permit);
        }
    }

    pub(crate) fn release(&self) {
        self.held.lock().unwrap_or_else(|e| e.into_inner()).take();
    }

    /// Lets queued executions run: gives the slot up and queues for it again.
    pub(crate) async fn yield_slot(&self) {
        self.release();
        tokio::task::yield_now().await;
        self.acquire().await;
    }
}

/// Tracks linear memory against the execution's cap; growth past it traps, so the
/// guest cannot catch an out-of-memory and keep running.
#[derive(Debug)]
pub(crate) struct MemoryLimiter {
    pub(crate) max: usize,
    pub(crate) peak: usize,
    pub(crate) exceeded: bool,
}

impl ResourceLimiter for MemoryLimiter {
    fn memory_growing(&mut self, _current: usize, desired: usize, _maximum: Option<usize>) -> wasmtime::Result<bool> {
        if desired > self.max {
            self.exceeded = true;
            return Err(wasmtime::format_err!("memory limit of {} bytes reached", self.max));
        }
        self.peak = self.peak.max(desired);
        Ok(true)
    }

    fn table_growing(&mut self, _current: usize, desired: usize, _maximum: Option<usize>) -> wasmtime::Result<bool> {
        Ok(desired <= 100_000)
    }
}

/// One host call as the ledger records it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostCallRecord {
    /// The call name, e.g. `tools.github.create_issue`.
    pub name: String,
    /// Unix milliseconds.
    pub started_at_ms: i64,
    pub latency_ms: u64,
    /// `ok`, the error kind, or `cancelled` when the execution ended first.
    pub outcome: String,
}

/// A call in flight: when it started, for its record.
struct InFlight {
    name: String,
    at: std::time::Instant,
    at_ms: i64,
}

/// A call a door held (see [`Started::Held`]): kept with a paused execution until it
/// is decided.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct HeldCall {
    /// The call's id in the execution.
    pub id: u32,
    /// Its name, e.g. `tools.github.merge_pull_request`.
    pub name: String,
    pub args: serde_json::Value,
    pub hold: Hold,
    /// Unix milliseconds.
    pub held_at_ms: i64,
}

/// What the guest reported through `finish`.
#[derive(Debug)]
pub(crate) enum GuestOutcome {
    Value(Box<RawValue>),
    Failed(ExecError),
}

/// The preparation phase (TypeScript stripping) of an execution, until the guest calls
/// `source_ready`: the budget it runs under, and the execution's own limits to restore.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Preparing {
    /// Fuel the phase may use: the smaller of its work bound and the execution's fuel.
    pub(crate) fuel: u64,
    /// True when `fuel` is the phase's work bound rather than the execution's own limit.
    pub(crate) fuel_is_bound: bool,
    /// Memory cap during the phase.
    pub(crate) memory_bytes: usize,
    /// True when `memory_bytes` is the phase's bound rather than the execution's limit.
    pub(crate) memory_is_bound: bool,
}

/// Everything one execution's store holds. Dropped with the store: nothing survives.
pub(crate) struct HostState {
    pub(crate) wasi: WasiState,
    pub(crate) limiter: MemoryLimiter,
    pub(crate) limits: Limits,
    pub(crate) code: String,
    /// Length of the code as submitted (`code` is handed to the guest and emptied).
    pub(crate) code_bytes: usize,
    /// `input` as JSON text; empty when the request had none.
    pub(crate) input: String,
    pub(crate) language: Language,
    /// The execution continues a session (see the guest's docs on sessions).
    session: bool,
    /// Set while the guest prepares the code (see [`Preparing`]).
    pub(crate) preparing: Option<Preparing>,
    /// Fuel given to the store so far: what it started with, raised to the execution's
    /// whole fuel when preparation ends.
    pub(crate) fuel_granted: u64,
    /// What the preparation phase used, once it ended (TypeScript only).
    pub(crate) strip_usage: Option<super::StripUsage>,
    created: std::time::Instant,
    /// The console door (`log`): every execution has it.
    pub(crate) console: Console,
    /// The execution's other doors (`call`).
    doors: Doors,
    /// A limit enforced by trapping: the trap's cause.
    pub(crate) limit_hit: Option<ExecError>,
    pub(crate) calls_started: u32,
    in_flight: FuturesUnordered<BoxFuture<'static, (u32, Vec<u8>, &'static str)>>,
    replies: HashMap<u32, Vec<u8>>,
    started: HashMap<u32, InFlight>,
    /// Calls held outside the execution (see [`HeldCall`]).
    pub(crate) held: Vec<HeldCall>,
    /// Calls routed to each door (by its name), so its count carries over a pause.
    pub(crate) door_calls: std::collections::BTreeMap<String, u32>,
    pub(crate) call_records: Vec<HostCallRecord>,
    pub(crate) outcome: Option<GuestOutcome>,
    execution_id: Arc<str>,
    trace: TraceContext,
    pub(crate) cpu: CpuSlot,
}

impl HasWasi for HostState {
    fn wasi(&mut self) -> &mut WasiState {
        &mut self.wasi
    }
}

pub(crate) struct HostSetup {
    pub(crate) limits: Limits,
    pub(crate) code: String,
    pub(crate) input: String,
    pub(crate) language: Language,
    pub(crate) preparing: Option<Preparing>,
    pub(crate) lines: Option<LineSender>,
    pub(crate) doors: Doors,
    pub(crate) execution_id: Arc<str>,
    pub(crate) cpu: CpuSlot,
    /// The execution continues a session (request part 3 is `session`).
    pub(crate) session: bool,
    pub(crate) trace: TraceContext,
}

impl HostState {
    /// Request part 3: how the guest evaluates the code.
    fn mode(&self) -> &'static str {
        if self.session {
            "session"
        } else {
            ""
        }
    }

    pub(crate) fn new(setup: HostSetup) -> Self {
        let (memory, fuel) = match setup.preparing {
            Some(phase) => (phase.memory_bytes, phase.fuel),
            None => (setup.limits.memory_bytes as usize, setup.limits.fuel),
        };
        Self {
            wasi: WasiState::new(wasi::Entropy::Live),
            limiter: MemoryLimiter { max: memory, peak: 0, exceeded: false },
            limits: setup.limits,
            code_bytes: setup.code.len(),
            code: setup.code,
            input: setup.input,
            language: setup.language,
            session: setup.session,
            preparing: setup.preparing,
            fuel_granted: fuel,
            strip_usage: None,
            created: std::time::Instant::now(),
            console: Console::new(setup.limits.output_bytes, setup.lines),
            doors: setup.doors,
            limit_hit: None,
            calls_started: 0,
            in_flight: FuturesUnordered::new(),
            replies: HashMap::new(),
            started: HashMap::new(),
            held: Vec::new(),
            door_calls: Default::default(),
            call_records: Vec::new(),
            outcome: None,
            execution_id: setup.execution_id,
            trace: setup.trace,
            cpu: setup.cpu,
        }
    }

    /// Records calls still in flight as cancelled; called when the execution ends.
    pub(crate) fn cancel_in_flight(&mut self) {
        let mut left: Vec<_> = self.started.drain().collect();
        left.sort_by_key(|(id, _)| *id);
        for (_, call) in left {
            self.call_records.push(HostCallRecord {
                name: call.name,
                started_at_ms: call.at_ms,
                latency_ms: call.at.elapsed().as_millis() as u64,
                outcome: "cancelled".into(),
            });
        }
    }

    /// Routes call `name` to its door: started, held, or refused.
    fn start(&mut self, name: &str, args: serde_json::Value, cleared: Option<Arc<str>>) -> Result<Started, ExecError> {
        let (door, method) = self.doors.route(name)?;
        let door_name = name.split_once('.').map_or(name, |(door, _)| door);
        match self.door_calls.get_mut(door_name) {
            Some(count) => *count += 1,
            None => {
                self.door_calls.insert(door_name.to_string(), 1);
            }
        }
        door.call(Call {
            method: method.to_string(),
            args,
            execution_id: self.execution_id.clone(),
            trace: self.trace.clone(),
            cleared,
        })
    }

    /// Puts call `id` in flight: the future of a started call, or its refusal, which
    /// is recorded at once with its reason, whether or not the code ever awaits it.
    fn launch(&mut self, id: u32, name: String, call: Result<Pending, ExecError>) {
        let max_reply = self.limits.result_bytes as usize;
        match &call {
            Err(error) => self.call_records.push(HostCallRecord {
                name: name.clone(),
                started_at_ms: now_ms(),
                latency_ms: 0,
                outcome: error.kind.as_str().into(),
            }),
            Ok(_) => {
                self.started.insert(id, InFlight { name, at: std::time::Instant::now(), at_ms: now_ms() });
            }
        }
        self.in_flight.push(Box::pin(async move {
            let result = match call {
                Ok(future) => future.await,
                Err(error) => Err(error),
            };
            let outcome = match &result {
                Ok(_) => "ok",
                Err(error) => error.kind.as_str(),
            };
            let mut reply = envelope(result);
            if reply.len() > max_reply {
                reply = envelope(Err(ExecError::new(
                    Kind::OutputLimit,
                    format!("reply of {} bytes is over the {max_reply}-byte limit", reply.len()),
                )));
            }
            (id, reply, outcome)
        }));
    }

    /// Lets the held calls go, as their deciders said: each one cleared is made now
    /// (the door still refuses it if the policies now deny it outright), each one
    /// refused rejects in the code with its error. A call not named stays held.
    pub(crate) fn release(&mut self, decisions: Vec<(u32, Result<Arc<str>, ExecError>)>) {
        for (id, decision) in decisions {
            let Some(at) = self.held.iter().position(|held| held.id == id) else { continue };
            let held = self.held.remove(at);
            let call = decision.and_then(|cleared| match self.start(&held.name, held.args, Some(cleared))? {
                Started::Now(future) => Ok(future),
                Started::Held(..) => Err(ExecError::new(Kind::Internal, "a cleared call was held again")),
            });
            self.launch(id, held.name, call);
        }
    }

    fn trap(&mut self, error: ExecError) -> wasmtime::Error {
        let message = error.message.clone();
        self.limit_hit = Some(error);
        wasmtime::format_err!(message)
    }
}

fn guest_bytes(caller: &mut Caller<'_, HostState>, ptr: i32, len: i32) -> wasmtime::Result<Vec<u8>> {
    let memory = wasi::memory(caller).ok_or_else(|| wasmtime::format_err!("guest exports no memory"))?;
    let start = ptr as u32 as usize;
    let end = start + len.max(0) as u32 as usize;
    memory
        .data(&*caller)
        .get(start..end)
        .map(<[u8]>::to_vec)
        .ok_or_else(|| wasmtime::format_err!("guest passed an out-of-bounds buffer"))
}

fn put_guest_bytes(caller: &mut Caller<'_, HostState>, ptr: i32, len: i32, bytes: &[u8]) -> wasmtime::Result<i32> {
    let memory = wasi::memory(caller).ok_or_else(|| wasmtime::format_err!("guest exports no memory"))?;
    let n = bytes.len().min(len.max(0) as usize);
    memory.write(&mut *caller, ptr as u32 as usize, &bytes[..n])?;
    Ok(n as i32)
}

fn envelope(result: Result<serde_json::Value, ExecError>) -> Vec<u8> {
    let value = match result {
        Ok(ok) => serde_json::json!({ "ok": ok }),
        Err(error) => {
            serde_json::json!({ "error": { "kind": error.kind, "message": error.message } })
        }
    };
    serde_json::to_vec(&value).unwrap_or_else(|_| b"{\"ok\":null}".to_vec())
}

/// Largest error object the guest may report, whatever the result limit.
const MAX_ERROR_BYTES: u64 = 1 << 20;

/// The error object the guest reports through `finish` (status 1). It comes from
/// inside the sandbox, so every field is read leniently and checked: a field of the
/// wrong type is dropped, and the kind must be one the guest can know about.
#[derive(Deserialize)]
struct GuestError {
    kind: serde_json::Value,
    message: serde_json::Value,
    #[serde(default)]
    name: serde_json::Value,
    #[serde(default)]
    line: serde_json::Value,
    #[serde(default)]
    column: serde_json::Value,
    #[serde(default)]
    stack: serde_json::Value,
}

impl GuestError {
    /// The error the guest reported, or an `exception` saying it could not be read.
    /// Never `internal`: nothing the code throws can claim a fault of sandgate.
    fn read(text: &str) -> ExecError {
        let Ok(error) = serde_json::from_str::<GuestError>(&well_formed_json(text)) else {
            return ExecError::new(Kind::Exception, "the code threw an error the sandbox cannot read");
        };
        // Kinds the host decides itself (limits, `internal`) never come from the
        // guest; the prelude reports a host-call kind only for errors the host made.
        let kind = error.kind.as_str().and_then(Kind::parse).filter(|kind| kind.guest_may_report());
        let kind = kind.unwrap_or(Kind::Exception);
        let text = |value: serde_json::Value| match value {
            serde_json::Value::String(text) if !text.is_empty() => Some(text),
            _ => None,
        };
        let position =
            |value: &serde_json::Value| value.as_u64().and_then(|n| u32::try_from(n).ok()).filter(|&n| n > 0);
        ExecError {
            kind,
            message: text(error.message).unwrap_or_else(|| "the code threw an error with no readable message".into()),
            name: text(error.name),
            line: position(&error.line),
            column: position(&error.column),
            stack: text(error.stack),
        }
    }
}

/// `json` with every `\u` escape of a lone UTF-16 surrogate replaced by `\ufffd`.
///
/// JavaScript strings may hold lone surrogates, and `JSON.stringify` writes them as
/// escapes, but they are not Unicode scalar values, so strict JSON readers (serde)
/// refuse them. Pairs are kept. Text without such an escape is returned as it is.
pub(crate) fn well_formed_json(json: &str) -> std::borrow::Cow<'_, str> {
    fn unit(bytes: &[u8], at: usize) -> Option<u16> {
        let hex = bytes.get(at + 2..at + 6)?;
        if bytes[at] != b'\\' || bytes[at + 1] != b'u' {
            return None;
        }
        u16::from_str_radix(std::str::from_utf8(hex).ok()?, 16).ok()
    }
    let bytes = json.as_bytes();
    let mut out: Option<String> = None;
    let mut copied = 0;
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] != b'\\' {
            i += 1;
            continue;
        }
        let Some(first) = unit(bytes, i) else {
            i += 2; // an escape other than \u: skip the escaped character
            continue;
        };
        let paired =
            (0xD800..0xDC00).contains(&first) && unit(bytes, i + 6).is_some_and(|u| (0xDC00..0xE000).contains(&u));
        if paired {
            i += 12;
        } else if (0xD800..0xE000).contains(&first) {
            let out = out.get_or_insert_with(|| String::with_capacity(json.len()));
            out.push_str(&json[copied..i]);
            out.push_str("\\ufffd");
            i += 6;
            copied = i;
        } else {
            i += 6;
        }
    }
    match out {
        Some(mut out) => {
            out.push_str(&json[copied..]);
            std::borrow::Cow::Owned(out)
        }
        None => std::borrow::Cow::Borrowed(json),
    }
}

/// Adds the `sandgate_v1` functions to `linker`, one function each.
pub(crate) fn add_to_linker(linker: &mut Linker<HostState>) -> wasmtime::Result<()> {
    link_request(linker)?;
    link_max_result(linker)?;
    link_log(linker)?;
    link_call(linker)?;
    link_wait(linker)?;
    link_reply_read(linker)?;
    link_source_ready(linker)?;
    link_finish(linker)
}

/// `request_len(which)` and `request_read(which, ptr, len)`: the code (handed over
/// once, then emptied), `input`, the language and the mode.
fn link_request(linker: &mut Linker<HostState>) -> wasmtime::Result<()> {
    linker.func_wrap(MODULE, "request_len", |caller: Caller<'_, HostState>, which: i32| -> i32 {
        let state = caller.data();
        match which {
            0 => state.code.len() as i32,
            1 => state.input.len() as i32,
            2 => state.language.as_str().len() as i32,
            3 => state.mode().len() as i32,
            _ => -1,
        }
    })?;
    linker.func_wrap(
        MODULE,
        "request_read",
        |mut caller: Caller<'_, HostState>, which: i32, ptr: i32, len: i32| -> wasmtime::Result<i32> {
            let bytes = match which {
                0 => std::mem::take(&mut caller.data_mut().code).into_bytes(),
                1 => std::mem::take(&mut caller.data_mut().input).into_bytes(),
                2 => caller.data().language.as_str().as_bytes().to_vec(),
                3 => caller.data().mode().as_bytes().to_vec(),
                _ => return Ok(-1),
            };
            put_guest_bytes(&mut caller, ptr, len, &bytes)
        },
    )?;
    Ok(())
}

/// `max_result()`: the largest result the host accepts, so the guest can refuse a
/// larger one before serialising it all.
fn link_max_result(linker: &mut Linker<HostState>) -> wasmtime::Result<()> {
    linker.func_wrap(MODULE, "max_result", |caller: Caller<'_, HostState>| -> i32 {
        caller.data().limits.result_bytes.min(i32::MAX as u64) as i32
    })?;
    Ok(())
}

/// `log(level, ptr, len)`: one console line, through the console door; passing the
/// output cap ends the execution.
fn link_log(linker: &mut Linker<HostState>) -> wasmtime::Result<()> {
    linker.func_wrap(
        MODULE,
        "log",
        |mut caller: Caller<'_, HostState>, level: i32, ptr: i32, len: i32| -> wasmtime::Result<()> {
            let len = len.max(0) as u64;
            let wanted = caller.data().console.wanted(len);
            let bytes = guest_bytes(&mut caller, ptr, wanted as i32)?;
            let state = caller.data_mut();
            match state.console.write(LogLevel::from_abi(level), &bytes, len) {
                Ok(()) => Ok(()),
                Err(limit) => Err(state.trap(limit)),
            }
        },
    )?;
    Ok(())
}

/// `call(name_ptr, name_len, args_ptr, args_len)`: starts a call through the door the
/// name's first part names, and returns its id. The host counts every call against
/// `limits.host_calls`; each door counts its own. A call refused before it starts
/// rejects the guest's promise, and is recorded at once with its reason, whether or
/// not the code ever awaits it; a limit ends the execution.
fn link_call(linker: &mut Linker<HostState>) -> wasmtime::Result<()> {
    linker.func_wrap(
        MODULE,
        "call",
        |mut caller: Caller<'_, HostState>,
         name_ptr: i32,
         name_len: i32,
         args_ptr: i32,
         args_len: i32|
         -> wasmtime::Result<i32> {
            let (limit, started) = (caller.data().limits.host_calls, caller.data().calls_started);
            if started >= limit {
                return Err(caller.data_mut().trap(ExecError::new(
                    Kind::CallLimit,
                    format!("the code made more than its limit of {limit} host calls"),
                )));
            }
            let max_args = caller.data().limits.result_bytes;
            let name = guest_bytes(&mut caller, name_ptr, name_len.min(MAX_CALL_NAME as i32 + 1))?;
            let args = if (args_len.max(0) as u64) > max_args {
                Err(ExecError::new(
                    Kind::InvalidRequest,
                    format!("call arguments are {args_len} bytes; the limit is {max_args}"),
                ))
            } else {
                let bytes = guest_bytes(&mut caller, args_ptr, args_len)?;
                serde_json::from_str::<serde_json::Value>(&well_formed_json(&String::from_utf8_lossy(&bytes)))
                    .map_err(|e| ExecError::new(Kind::InvalidRequest, format!("call arguments are not JSON: {e}")))
            };
            let state = caller.data_mut();
            state.calls_started += 1;
            let id = state.calls_started;
            let name = String::from_utf8_lossy(&name).into_owned();
            let call = if name.len() > MAX_CALL_NAME {
                Err(ExecError::new(Kind::InvalidRequest, "host call name is too long"))
            } else {
                args.and_then(|args| state.start(&name, args, None))
            };
            // A door's limit ends the execution, as the host's own does.
            if let Err(error) = &call {
                if error.kind == Kind::CallLimit {
                    return Err(state.trap(error.clone()));
                }
            }
            match call {
                Ok(Started::Held(hold, call)) => {
                    state.held.push(HeldCall { id, name: name.clone(), args: call.args, hold, held_at_ms: now_ms() });
                }
                Ok(Started::Now(future)) => state.launch(id, name.clone(), Ok(future)),
                Err(error) => state.launch(id, name.clone(), Err(error)),
            }
            tracing::debug!(call = %name, id, "host call started");
            Ok(id as i32)
        },
    )?;
    Ok(())
}

/// `wait()`: parks the execution until a call in flight completes (giving up its CPU
/// slot meanwhile); `(id << 32) | reply length`, or -1 when none is in flight.
fn link_wait(linker: &mut Linker<HostState>) -> wasmtime::Result<()> {
    linker.func_wrap_async(MODULE, "wait", |mut caller: Caller<'_, HostState>, (): ()| {
        Box::new(async move {
            let state = caller.data_mut();
            if state.in_flight.is_empty() {
                // Held calls wait outside the execution: the guest returns, to be
                // resumed once they are decided (see `Paused`).
                return if state.held.is_empty() { -1i64 } else { -2 };
            }
            let cpu = state.cpu.clone();
            cpu.release();
            let next = state.in_flight.next().await;
            cpu.acquire().await;
            match next {
                Some((id, reply, outcome)) => {
                    if let Some(call) = state.started.remove(&id) {
                        state.call_records.push(HostCallRecord {
                            name: call.name,
                            started_at_ms: call.at_ms,
                            latency_ms: call.at.elapsed().as_millis() as u64,
                            outcome: outcome.into(),
                        });
                    }
                    let len = reply.len() as i64;
                    state.replies.insert(id, reply);
                    ((id as i64) << 32) | len
                }
                None => -1,
            }
        })
    })?;
    Ok(())
}

/// `reply_read(id, ptr, len)`: a completed call's reply, once.
fn link_reply_read(linker: &mut Linker<HostState>) -> wasmtime::Result<()> {
    linker.func_wrap(
        MODULE,
        "reply_read",
        |mut caller: Caller<'_, HostState>, id: i32, ptr: i32, len: i32| -> wasmtime::Result<i32> {
            let Some(reply) = caller.data_mut().replies.remove(&(id as u32)) else {
                return Ok(-1);
            };
            put_guest_bytes(&mut caller, ptr, len, &reply)
        },
    )?;
    Ok(())
}

/// `source_ready()`: TypeScript is stripped; the preparation phase and its tighter
/// limits end.
fn link_source_ready(linker: &mut Linker<HostState>) -> wasmtime::Result<()> {
    linker.func_wrap(MODULE, "source_ready", |mut caller: Caller<'_, HostState>| -> wasmtime::Result<()> {
        let Some(phase) = caller.data_mut().preparing.take() else {
            return Ok(());
        };
        // Preparation is over: the rest of the execution's fuel and its own memory cap.
        let used = phase.fuel.saturating_sub(caller.get_fuel().unwrap_or(0));
        let limits = caller.data().limits;
        caller.set_fuel(limits.fuel.saturating_sub(used))?;
        let state = caller.data_mut();
        state.fuel_granted = limits.fuel;
        state.limiter.max = limits.memory_bytes as usize;
        state.strip_usage = Some(super::StripUsage {
            fuel: used,
            wall_us: state.created.elapsed().as_micros() as u64,
            memory_bytes: state.limiter.peak as u64,
        });
        Ok(())
    })?;
    Ok(())
}

/// `finish(status, ptr, len)`: the outcome, a result or an error the guest reports.
fn link_finish(linker: &mut Linker<HostState>) -> wasmtime::Result<()> {
    linker.func_wrap(
        MODULE,
        "finish",
        |mut caller: Caller<'_, HostState>, status: i32, ptr: i32, len: i32| -> wasmtime::Result<()> {
            let max = caller.data().limits.result_bytes;
            let len_bytes = len.max(0) as u64;
            let outcome = if status == 0 && len_bytes > max {
                GuestOutcome::Failed(ExecError::new(
                    Kind::OutputLimit,
                    format!("result is {len} bytes; the limit is {max}"),
                ))
            } else if len_bytes > MAX_ERROR_BYTES {
                GuestOutcome::Failed(ExecError::new(
                    Kind::Exception,
                    format!("the code threw an error of {len} bytes, too large to report"),
                ))
            } else {
                let bytes = guest_bytes(&mut caller, ptr, len)?;
                let text = String::from_utf8_lossy(&bytes);
                match status {
                    0 => match RawValue::from_string(well_formed_json(&text).into_owned()) {
                        Ok(raw) => GuestOutcome::Value(raw),
                        Err(e) => GuestOutcome::Failed(ExecError::new(
                            Kind::Exception,
                            format!("the code's result could not be read as JSON: {e}"),
                        )),
                    },
                    1 => GuestOutcome::Failed(GuestError::read(&text)),
                    _ => GuestOutcome::Failed(ExecError::new(Kind::Internal, format!("guest fault: {text}"))),
                }
            };
            caller.data_mut().outcome = Some(outcome);
            Ok(())
        },
    )?;
    Ok(())
}
