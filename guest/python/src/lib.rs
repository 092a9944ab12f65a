//! The sandgate Python guest: Monty (Pydantic's Python interpreter, in Rust)
//! compiled to `wasm32-wasip1`, behind the same host ABI as the QuickJS guest (see
//! `sandgate_guest_abi`). wasmtime's fuel, epoch and memory limits are the boundary;
//! Monty's own sandboxing is defence in depth.
//!
//! # Contract
//!
//! The code is a script; the value of its last expression is the result, as JSON
//! (`dict` with string keys, `list`, `tuple`, `str`, `int`, `float`, `bool`, `None`;
//! anything else is an `exception` naming the type). `input` is a global.
//! `print()` lines are console lines (level `log`), and `console.log/info/warn/error`
//! write one line at that level, as in JavaScript. `tools.<server>.<tool>(**kwargs)` (or one dict
//! argument) and `model.chat(**request)` start host calls and return awaitables, so
//! `asyncio.gather` runs them concurrently on the host. A failed call raises, and
//! when nothing catches it the outcome carries the host's kind (`tool_denied`, ...).
//! `open()` and `pathlib.Path` reach the session's workspace and the policy's mounts
//! through the host's `fs` capability, as JavaScript's `fs` does (see `file_call`);
//! without a grant every file call raises `PermissionError`. The clock is UTC
//! (`datetime.now()`, `date.today()`) and the environment is empty, as for JavaScript.
//!
//! Monty suspends at every host call (`RunProgress::FunctionCall`): the guest starts
//! the host call and resumes with a pending future; when every task waits
//! (`ResolveFutures`) it blocks in the host's `wait` for the first reply and resolves
//! that future. Attribute lookups on the host objects `tools` and `model`
//! (`NameLookup`) name the server and tool.
//!
//! When the host holds every call in flight (a call waiting for a person's
//! approval), its `wait` says so: the guest keeps the interpreter's suspended state
//! and its own bookkeeping in memory ([`PAUSED`]) and returns from `run` without an
//! outcome; `resume`, called in a fresh instance holding that memory, drives on from
//! there. Nothing runs twice.
//!
//! Exports: `wizer-initialize` (build time only), `run` and `resume`.

use std::borrow::Cow;
use std::collections::HashMap;

use std::cell::RefCell;

use monty::{MontyRepl, MontyRun, ReplProgress, ReplStartError, RunProgress};
use monty_types::{
    CompileOptions, DictPairs, ExcData, ExcType, ExtFunctionResult, FileMode, JsonErrorData, MontyClassInstance,
    MontyClassType, MontyDate, MontyDateTime, MontyException, MontyFileHandle, MontyObject, MontyUuid,
    NameLookupResult, OsFunctionCall, PrintWriter, PrintWriterCallback, ResourceLimits, ResourceTracker,
};
use sandgate_guest_abi as abi;
use serde_json::{json, Value};

/// Drives the interpreter through its suspensions to the end: the same loop over a
/// script's `RunProgress` and a session's `ReplProgress`, which have the same shape.
macro_rules! drive {
    ($run:expr, $progress:expr, $P:ident, $suspend:path, $complete:pat => $done:expr, $err:ident => $failed:expr) => {{
        let run: &mut Run = $run;
        let mut progress = $progress;
        loop {
            let step = match progress {
                Ok(step) => step,
                Err($err) => break $failed,
            };
            progress = match step {
                $complete => break $done,
                $P::FunctionCall(call)
                    if call.object_id == Some(CONSOLE) || call.function_name.starts_with("console.") =>
                {
                    let method = call.function_name.strip_prefix("console.").unwrap_or(&call.function_name);
                    let result = console_call(run, method, &call.args);
                    call.resume(result, PrintWriter::Callback(&mut run.console))
                }
                $P::FunctionCall(call) => {
                    match host_call(run, call.object_id, &call.function_name, &call.args, &call.kwargs, call.call_id) {
                        None => call.resume_pending(PrintWriter::Callback(&mut run.console)),
                        Some(result) => call.resume(result, PrintWriter::Callback(&mut run.console)),
                    }
                }
                $P::NameLookup(lookup) => {
                    let result = name_lookup(run, lookup.object_id(), &lookup.name);
                    lookup.resume(result, PrintWriter::Callback(&mut run.console))
                }
                $P::ResolveFutures(pending) => match resolve(run, pending.pending_call_ids()) {
                    Resolved::Call(id, result) => {
                        pending.resume(vec![(id, result)], PrintWriter::Callback(&mut run.console))
                    }
                    Resolved::Stale => Ok($P::ResolveFutures(pending)),
                    Resolved::Unsettled => break Ended::Reported,
                    Resolved::Pause => {
                        let kept = (std::mem::take(run), $suspend($P::ResolveFutures(pending)));
                        PAUSED.with(|paused| *paused.borrow_mut() = Some(kept));
                        break Ended::Paused;
                    }
                },
                $P::OsCall(os) => {
                    let result = os_call(run, os.function_call.clone());
                    os.resume(result, PrintWriter::Callback(&mut run.console))
                }
            };
        }
    }};
}

/// The name the code's frames carry in tracebacks.
const FILENAME: &str = "<code>";

/// Identities of the host objects (fixed, so the snapshot is reproducible).
const TOOLS: MontyUuid = MontyUuid::from_bytes(*b"sandgate--tools\0");
const MODEL: MontyUuid = MontyUuid::from_bytes(*b"sandgate--model\0");
const CONSOLE: MontyUuid = MontyUuid::from_bytes(*b"sandgate-console");

/// `console.<method>`'s level, as JavaScript's console has them.
fn console_level(method: &str) -> Option<u32> {
    match method {
        "log" | "debug" => Some(0),
        "info" => Some(1),
        "warn" => Some(2),
        "error" => Some(3),
        _ => None,
    }
}

/// What `console.*` shows of a value: a string as it is, anything else as its repr.
fn shown(value: &MontyObject) -> String {
    match value {
        MontyObject::String(s) => s.clone(),
        other => other.py_repr(),
    }
}

/// Console output, one host log line per line printed.
#[derive(Default)]
struct Console {
    line: String,
}

impl Console {
    fn flush(&mut self) {
        if !self.line.is_empty() {
            abi::log(0, &std::mem::take(&mut self.line));
        }
    }
}

impl PrintWriterCallback for Console {
    fn stdout_write(&mut self, output: Cow<'_, str>) -> Result<(), MontyException> {
        for (i, part) in output.split('\n').enumerate() {
            if i > 0 {
                abi::log(0, &std::mem::take(&mut self.line));
            }
            self.line.push_str(part);
        }
        Ok(())
    }

    fn stdout_push(&mut self, end: char) -> Result<(), MontyException> {
        if end == '\n' {
            abi::log(0, &std::mem::take(&mut self.line));
        } else {
            self.line.push(end);
        }
        Ok(())
    }
}

/// A host object the code reaches through attributes.
fn host_object(name: &str, id: MontyUuid) -> MontyObject {
    MontyObject::ClassInstance(Box::new(MontyClassInstance {
        class_type: MontyClassType {
            name: name.to_string(),
            id,
            host_defined: true,
            is_dataclass: false,
            attrs: DictPairs::from(Vec::new()),
        },
        instance_id: id,
        attrs: DictPairs::from(Vec::new()),
    }))
}

/// What one run keeps while it drives the interpreter.
#[derive(Default)]
struct Run {
    console: Console,
    /// Server objects handed out: id → server name.
    servers: HashMap<MontyUuid, String>,
    /// Host call id → Monty call id, for calls in flight.
    calls: HashMap<u32, u32>,
    /// Replies to pending calls that came while a file call waited for its own, in
    /// the order they came: `resolve` hands them out before waiting again.
    early: std::collections::VecDeque<(u32, String)>,
}

impl Run {
    fn server_object(&mut self, server: &str) -> MontyObject {
        let mut bytes = [0u8; 16];
        bytes[..4].copy_from_slice(b"srv-");
        bytes[4..12].copy_from_slice(&(self.servers.len() as u64 + 1).to_le_bytes());
        let id = MontyUuid::from_bytes(bytes);
        self.servers.insert(id, server.to_string());
        host_object(server, id)
    }

    /// The host call name for a method call on a host object, or for a function the
    /// guest handed out.
    fn call_name(&self, object: Option<MontyUuid>, method: &str) -> Option<String> {
        match object {
            Some(id) if id == MODEL => Some(format!("model.{method}")),
            Some(id) => self.servers.get(&id).map(|server| format!("tools.{server}.{method}")),
            None if method.starts_with("tools.") || method.starts_with("model.") => Some(method.to_string()),
            None => None,
        }
    }

    fn host_error(&mut self, kind: &str, message: &str) -> MontyException {
        let exc_type = match kind {
            "tool_denied" | "model_denied" => ExcType::PermissionError,
            "invalid_request" => ExcType::ValueError,
            // The host's file errors start with their POSIX code, as `fs` errors do
            // in JavaScript; Python has a class for the common ones.
            "file_error" => match message.split(':').next().unwrap_or_default() {
                "ENOENT" => ExcType::FileNotFoundError,
                "EEXIST" => ExcType::FileExistsError,
                "EISDIR" => ExcType::IsADirectoryError,
                "ENOTDIR" => ExcType::NotADirectoryError,
                "EACCES" | "EPERM" | "EROFS" => ExcType::PermissionError,
                "EILSEQ" => ExcType::UnicodeDecodeError,
                _ => ExcType::OSError,
            },
            _ => ExcType::RuntimeError,
        };
        MontyException::new(exc_type, Some(message.to_string())).with_data(host_mark(kind))
    }

    /// The exception a host reply that is an error makes, or its value.
    fn reply(&mut self, reply: &str) -> Result<MontyObject, MontyException> {
        match serde_json::from_str::<Value>(reply) {
            Ok(Value::Object(reply)) => match (reply.get("ok"), reply.get("error")) {
                (_, Some(error)) => {
                    let kind = error["kind"].as_str().unwrap_or("tool_error");
                    let message = error["message"].as_str().unwrap_or("the call failed");
                    Err(self.host_error(kind, message))
                }
                (Some(value), None) => Ok(from_json(value)),
                (None, None) => Ok(MontyObject::None),
            },
            _ => Err(MontyException::new(ExcType::RuntimeError, Some("the host's reply cannot be read".into()))),
        }
    }
}

/// A call's arguments as the host takes them: keyword arguments as one object, or a
/// single dict argument.
fn call_args(args: &[MontyObject], kwargs: &[(MontyObject, MontyObject)]) -> Result<Value, String> {
    match (args, kwargs) {
        ([], []) => Ok(Value::Object(Default::default())),
        ([], kwargs) => {
            let mut object = serde_json::Map::new();
            for (key, value) in kwargs {
                let MontyObject::String(key) = key else { return Err("keyword names must be strings".into()) };
                object.insert(key.clone(), to_json(value)?);
            }
            Ok(Value::Object(object))
        }
        ([single @ MontyObject::Dict(_)], []) => to_json(single),
        _ => Err("pass the arguments as keywords, or as one dict".into()),
    }
}

fn from_json(value: &Value) -> MontyObject {
    match value {
        Value::Null => MontyObject::None,
        Value::Bool(b) => MontyObject::Bool(*b),
        Value::Number(n) => match n.as_i64() {
            Some(i) => MontyObject::Int(i),
            None => MontyObject::Float(n.as_f64().unwrap_or(f64::NAN)),
        },
        Value::String(s) => MontyObject::String(s.clone()),
        Value::Array(items) => MontyObject::List(items.iter().map(from_json).collect()),
        Value::Object(map) => MontyObject::Dict(DictPairs::from(
            map.iter().map(|(k, v)| (MontyObject::String(k.clone()), from_json(v))).collect::<Vec<_>>(),
        )),
    }
}

/// A value as JSON, or why it cannot be.
fn to_json(value: &MontyObject) -> Result<Value, String> {
    Ok(match value {
        MontyObject::None => Value::Null,
        MontyObject::Bool(b) => Value::Bool(*b),
        MontyObject::Int(i) => Value::from(*i),
        // Like JSON.stringify: a float JSON cannot hold becomes null.
        MontyObject::Float(f) => serde_json::Number::from_f64(*f).map_or(Value::Null, Value::Number),
        MontyObject::String(s) => Value::String(s.clone()),
        MontyObject::List(items) | MontyObject::Tuple(items) => {
            Value::Array(items.iter().map(to_json).collect::<Result<_, _>>()?)
        }
        MontyObject::Dict(pairs) => {
            let mut object = serde_json::Map::new();
            for (key, item) in pairs {
                let key = match key {
                    MontyObject::String(s) => s.clone(),
                    MontyObject::Int(i) => i.to_string(),
                    other => return Err(format!("a dict key of type `{}`", other.type_name())),
                };
                object.insert(key, to_json(item)?);
            }
            Value::Object(object)
        }
        MontyObject::Repr(text) => return Err(format!("`{text}` (a call not awaited? `await` it)")),
        other => return Err(format!("a value of type `{}`", other.type_name())),
    })
}

/// What marks an exception made from a host reply (see [`host_mark`]).
const HOST_ERROR: &str = "sandgate: an error the host replied with";

/// The mark an exception made from a host reply carries: the host's kind, in the
/// exception's structured payload. Monty keeps that payload with the exception object
/// wherever it goes (`except ... as e: raise e`, a bare `raise`, a global, `gather`),
/// shows the code only `.args`, and fills one for nothing the code raises itself but a
/// `json.JSONDecodeError` from `json.loads`, with `json`'s own message and a line of
/// at least 1. So a new exception the code raises, whatever its type and text, has no
/// host kind.
fn host_mark(kind: &str) -> ExcData {
    ExcData::Json(Box::new(JsonErrorData {
        msg: HOST_ERROR.to_string(),
        doc: Some(kind.to_string()),
        pos: 0,
        lineno: 0,
        colno: 0,
    }))
}

/// The host's kind for an exception made from a host reply (see [`host_mark`]).
fn host_kind(exception: &MontyException) -> Option<&str> {
    match exception.data() {
        ExcData::Json(data) if data.msg == HOST_ERROR && data.lineno == 0 => data.doc.as_deref(),
        _ => None,
    }
}

/// Whether the parser or compiler refused the code, rather than the code raising
/// `SyntaxError` as it ran: Monty builds a compile error's one frame with
/// `hide_frame_name` (CPython's `File "...", line N`, without `, in <module>`), and a
/// raised exception's frames never have it. Script and session alike.
fn refused(exception: &MontyException) -> bool {
    exception.exc_type() == ExcType::SyntaxError && exception.traceback().iter().any(|frame| frame.hide_frame_name)
}

/// The error object for an exception that ended the run.
fn describe(exception: &MontyException) -> String {
    let exc_type = exception.exc_type();
    let message = exception.message().unwrap_or_default().to_string();
    let kind = if refused(exception) { "syntax" } else { host_kind(exception).unwrap_or("exception") };
    let mut error = serde_json::Map::new();
    error.insert("kind".into(), Value::String(kind.to_string()));
    let name: &'static str = exc_type.into();
    error.insert("name".into(), Value::String(name.to_string()));
    let shown = if message.is_empty() { name.to_string() } else { message };
    error.insert("message".into(), Value::String(shown));
    // A script's frames are all `<code>`; a session names each snippet it runs
    // `<python-input-N>`, and the frames of a function an earlier one defined carry
    // that one's name and lines. The outermost frame is the code that ran.
    let code = exception.traceback().first().map(|f| f.filename.as_str());
    if let Some(frame) = exception.traceback().iter().rev().find(|f| Some(f.filename.as_str()) == code) {
        error.insert("line".into(), Value::from(frame.start.line));
        error.insert("column".into(), Value::from(frame.start.column));
    }
    if !exception.traceback().is_empty() {
        error.insert("stack".into(), Value::String(exception.to_string()));
    }
    Value::Object(error).to_string()
}

/// Build-time initialisation: runs a small script so the allocator and the
/// interpreter's lazily built tables are in the snapshot.
#[export_name = "wizer-initialize"]
pub extern "C" fn wizer_initialize() {
    let runner = MontyRun::new("sum([1, 2, 3])".to_string(), FILENAME, Vec::new(), CompileOptions::default())
        .expect("the warm-up script compiles");
    runner.run(Vec::new(), ResourceTracker::default(), PrintWriter::Disabled).expect("the warm-up script runs");
}

/// How a run ended.
enum Ended {
    Value(MontyObject),
    Raised(MontyException),
    /// The outcome is reported already (an execution that can never settle).
    Reported,
    /// The host paused the execution; the run is kept in [`PAUSED`].
    Paused,
}
/// The interpreter's state at a pause (one at most: their sizes' difference costs nothing).
#[allow(clippy::large_enum_variant)]
enum Suspended {
    Script(RunProgress),
    Repl(ReplProgress),
}

thread_local! {
    /// A paused run and where its interpreter stopped, until `resume`.
    static PAUSED: RefCell<Option<(Run, Suspended)>> = const { RefCell::new(None) };
    /// A session's interpreter: its globals live on in the guest's memory, which the
    /// host carries from one execution to the next.
    static REPL: RefCell<Option<MontyRepl>> = const { RefCell::new(None) };
}

/// The most one allocation can ask for in a 32-bit guest: Rust refuses more
/// (`capacity overflow`, a panic) before the allocator sees the request.
const MAX_ALLOCATION: usize = isize::MAX as usize;

fn limits() -> ResourceTracker {
    // No allocator reports live memory to Monty here (`monty-alloc` would), so
    // `max_memory` bounds only what one operation says it will allocate (`'a' * n`,
    // `[0] * n`, `bytes(n)`, `str.ljust`, ...): Monty raises `MemoryError` instead of
    // asking for it. Smaller requests meet the host's memory limit in the allocator.
    ResourceTracker::new(ResourceLimits {
        max_suspensions: usize::MAX,
        max_memory: Some(MAX_ALLOCATION),
        ..ResourceLimits::default()
    })
}

/// The bytes an operation asked for when Monty refused it for `max_memory`: its
/// `MemoryError` says `memory limit exceeded: N bytes > L bytes` (and is uncatchable),
/// at a frame shown with a caret, which a `raise` statement's frame never is.
fn refused_allocation(exception: &MontyException) -> Option<usize> {
    if exception.exc_type() != ExcType::MemoryError || exception.traceback().last()?.hide_caret {
        return None;
    }
    let rest = exception.message()?.strip_prefix("memory limit exceeded: ")?;
    rest.strip_suffix(&format!(" bytes > {MAX_ALLOCATION} bytes"))?.parse().ok()
}

/// Runs the request the host holds and reports its outcome through `finish`.
#[no_mangle]
pub extern "C" fn run() {
    let code = abi::request(abi::CODE);
    abi::source_ready();
    let input = match abi::request(abi::INPUT).as_str() {
        "" => MontyObject::None,
        text => match serde_json::from_str::<Value>(text) {
            Ok(value) => from_json(&value),
            Err(error) => return abi::fault(&format!("the input is not JSON: {error}")),
        },
    };
    let mut run =
        Run { console: Console::default(), servers: HashMap::new(), calls: HashMap::new(), early: Default::default() };
    let globals = vec![
        ("input".to_string(), input),
        ("tools".to_string(), host_object("tools", TOOLS)),
        ("model".to_string(), host_object("model", MODEL)),
        ("console".to_string(), host_object("console", CONSOLE)),
    ];
    let ended = if abi::request(abi::MODE) == "session" {
        let mut repl = REPL
            .with(|slot| slot.borrow_mut().take())
            .unwrap_or_else(|| MontyRepl::new(FILENAME, limits(), CompileOptions::default()));
        // A session made before a change of limits takes the current ones.
        *repl.tracker_mut() = limits();
        let progress = repl.feed_start(&code, globals, PrintWriter::Callback(&mut run.console));
        drive_repl(&mut run, progress)
    } else {
        let (names, values): (Vec<String>, Vec<MontyObject>) = globals.into_iter().unzip();
        match MontyRun::new(code, FILENAME, names, CompileOptions::default()) {
            Ok(runner) => {
                let progress = runner.start(values, limits(), PrintWriter::Callback(&mut run.console));
                drive_script(&mut run, progress)
            }
            Err(exception) => Ended::Raised(exception),
        }
    };
    conclude(&mut run, ended);
}

/// Goes on with a paused run (see the crate docs), to its outcome or another pause.
#[no_mangle]
pub extern "C" fn resume() {
    let Some((mut run, suspended)) = PAUSED.with(|paused| paused.borrow_mut().take()) else {
        return abi::fault("there is no paused execution to resume");
    };
    let ended = match suspended {
        Suspended::Script(progress) => drive_script(&mut run, Ok(progress)),
        Suspended::Repl(progress) => drive_repl(&mut run, Ok(progress)),
    };
    conclude(&mut run, ended);
}

fn drive_script(run: &mut Run, progress: Result<RunProgress, MontyException>) -> Ended {
    drive!(run, progress, RunProgress, Suspended::Script, RunProgress::Complete(value) => Ended::Value(value), error => Ended::Raised(error))
}

fn drive_repl(run: &mut Run, progress: Result<ReplProgress, Box<ReplStartError>>) -> Ended {
    drive!(
        run,
        progress,
        ReplProgress,
        Suspended::Repl,
        ReplProgress::Complete { repl, value } => {
            REPL.with(|slot| *slot.borrow_mut() = Some(repl));
            Ended::Value(value)
        },
        failed => {
            let ReplStartError { repl, error } = *failed;
            REPL.with(|slot| *slot.borrow_mut() = Some(repl));
            Ended::Raised(error)
        }
    )
}

/// Reports how a run ended through `finish` (a paused run reports nothing yet).
fn conclude(run: &mut Run, ended: Ended) {
    if matches!(ended, Ended::Paused) {
        return;
    }
    run.console.flush();
    match ended {
        Ended::Value(value) => match to_json(&value) {
            Ok(json) => {
                let text = json.to_string();
                if text.len() as i64 > i64::from(abi::max_result()) {
                    abi::fail(
                        "output_limit",
                        &format!("the result is {} bytes of JSON, more than its limit", text.len()),
                        None,
                    );
                } else {
                    abi::finish(0, &text);
                }
            }
            Err(what) => abi::fail("exception", &format!("the result is {what}, which JSON cannot carry"), None),
        },
        Ended::Raised(exception) => {
            if let Some(bytes) = refused_allocation(&exception) {
                // Limits are the host's to report: end as the Rust runtime does when an
                // allocation fails, which the host reads in the guest's stderr.
                eprintln!("memory allocation of {bytes} bytes failed");
                std::process::abort();
            }
            abi::finish(1, &describe(&exception))
        }
        Ended::Reported | Ended::Paused => {}
    }
}

/// What to resume a call on `console` with: its line written at its level.
fn console_call(run: &mut Run, method: &str, args: &[MontyObject]) -> ExtFunctionResult {
    match console_level(method) {
        Some(level) => {
            run.console.flush();
            let line: Vec<String> = args.iter().map(shown).collect();
            abi::log(level, &line.join(" "));
            ExtFunctionResult::Return(MontyObject::None)
        }
        None => ExtFunctionResult::Error(MontyException::new(
            ExcType::AttributeError,
            Some(format!("'console' object has no attribute '{method}'")),
        )),
    }
}

/// Starts the host call a call on `tools` or `model` names: `None` when it started
/// (resume with a pending future), else what to resume with at once.
fn host_call(
    run: &mut Run,
    object: Option<MontyUuid>,
    function: &str,
    args: &[MontyObject],
    kwargs: &[(MontyObject, MontyObject)],
    call_id: u32,
) -> Option<ExtFunctionResult> {
    let Some(name) = run.call_name(object, function) else {
        let error = MontyException::new(ExcType::NameError, Some(format!("name '{function}' is not defined")));
        return Some(ExtFunctionResult::Error(error));
    };
    let args = match call_args(args, kwargs) {
        Ok(args) => args.to_string(),
        Err(why) => {
            return Some(ExtFunctionResult::Error(MontyException::new(
                ExcType::TypeError,
                Some(format!("{name}(): {why}")),
            )))
        }
    };
    let id = abi::call(&name, &args);
    if id <= 0 {
        let error =
            MontyException::new(ExcType::RuntimeError, Some("host call limit reached for this execution".into()));
        return Some(ExtFunctionResult::Error(error));
    }
    run.calls.insert(id as u32, call_id);
    None
}

/// What an attribute of a host object (or an unknown name) resolves to.
fn name_lookup(run: &mut Run, object: Option<MontyUuid>, name: &str) -> NameLookupResult {
    match object {
        Some(id) if id == TOOLS => NameLookupResult::Value(run.server_object(name)),
        Some(id) if id == CONSOLE => match console_level(name) {
            Some(_) => {
                NameLookupResult::Value(MontyObject::Function { name: format!("console.{name}"), docstring: None })
            }
            None => NameLookupResult::Undefined,
        },
        Some(id) => match run.call_name(Some(id), name) {
            Some(name) => NameLookupResult::Value(MontyObject::Function { name, docstring: None }),
            None => NameLookupResult::Undefined,
        },
        None => NameLookupResult::Undefined,
    }
}

/// What waiting for the host's next reply gives.
enum Resolved {
    /// A pending call's result.
    Call(u32, ExtFunctionResult),
    /// A reply to a call nothing waits for any more.
    Stale,
    /// Nothing is in flight: the code can never settle (reported).
    Unsettled,
    /// The host pauses the execution: every call in flight is held.
    Pause,
}

fn resolve(run: &mut Run, pending: &[u32]) -> Resolved {
    let (host_id, reply) = match run.early.pop_front() {
        Some(early) => early,
        None => match abi::wait() {
            abi::Wait::Reply(id, reply) => (id, reply),
            abi::Wait::Pause => return Resolved::Pause,
            abi::Wait::Idle => {
                abi::fail(
                    "unsettled",
                    "the code awaits a call that can never complete: no host call is in flight",
                    None,
                );
                return Resolved::Unsettled;
            }
        },
    };
    let Some(call_id) = run.calls.remove(&host_id).filter(|id| pending.contains(id)) else {
        return Resolved::Stale;
    };
    let result = match run.reply(&reply) {
        Ok(value) => ExtFunctionResult::Return(value),
        Err(error) => ExtFunctionResult::Error(error),
    };
    Resolved::Call(call_id, result)
}

/// What an OS call gets: the clock (UTC, as JavaScript's `Date`), an empty
/// environment, and files through the host's `fs` capability (see [`file_call`]).
fn os_call(run: &mut Run, call: OsFunctionCall) -> ExtFunctionResult {
    use chrono::{Datelike, Timelike};
    let now = chrono::Utc::now().naive_utc();
    let result = match call {
        OsFunctionCall::DateToday => {
            Ok(MontyObject::Date(MontyDate { year: now.year(), month: now.month() as u8, day: now.day() as u8 }))
        }
        OsFunctionCall::DateTimeNow(zone) => {
            let offset = zone.as_ref().map_or(0, |z| z.offset_seconds);
            let wall = now + chrono::TimeDelta::seconds(i64::from(offset));
            Ok(MontyObject::DateTime(MontyDateTime {
                year: wall.year(),
                month: wall.month() as u8,
                day: wall.day() as u8,
                hour: wall.hour() as u8,
                minute: wall.minute() as u8,
                second: wall.second() as u8,
                microsecond: wall.and_utc().timestamp_subsec_micros().min(999_999),
                offset_seconds: zone.as_ref().map(|z| z.offset_seconds),
                timezone_name: zone.as_ref().and_then(|z| z.name.clone()),
            }))
        }
        OsFunctionCall::Getenv(args) => Ok(args.default),
        OsFunctionCall::GetEnviron => Ok(MontyObject::Dict(DictPairs::from(Vec::new()))),
        files => file_call(run, files),
    };
    match result {
        Ok(value) => ExtFunctionResult::Return(value),
        Err(error) => ExtFunctionResult::Error(error),
    }
}

/// Calls the host's `fs.<method>` and waits for its reply: file calls are
/// synchronous in Python. Replies to other calls that come first are kept for
/// [`resolve`].
fn fs(run: &mut Run, method: &str, args: Value) -> Result<MontyObject, MontyException> {
    let id = abi::call(&format!("fs.{method}"), &args.to_string());
    if id <= 0 {
        return Err(MontyException::new(
            ExcType::RuntimeError,
            Some("host call limit reached for this execution".into()),
        ));
    }
    loop {
        // A file call in flight is never held, so the host cannot pause here.
        let abi::Wait::Reply(ready, reply) = abi::wait() else {
            return Err(MontyException::new(ExcType::RuntimeError, Some("the host lost a file call".into())));
        };
        if ready == id as u32 {
            return run.reply(&reply);
        }
        run.early.push_back((ready, reply));
    }
}

/// Whether `path` is a directory (`Some(true)`), something else (`Some(false)`), or
/// not there (`None`); other errors raise.
fn kind_of(run: &mut Run, path: &str) -> Result<Option<bool>, MontyException> {
    match fs(run, "stat", json!({ "path": path })) {
        Ok(stat) => Ok(Some(stat_field(&stat, "type").is_some_and(|t| t == "directory"))),
        Err(error) if error.exc_type() == ExcType::FileNotFoundError => Ok(None),
        Err(error) => Err(error),
    }
}

fn stat_field(stat: &MontyObject, name: &str) -> Option<String> {
    let MontyObject::Dict(pairs) = stat else { return None };
    pairs.into_iter().find_map(|(key, value)| match (key, value) {
        (MontyObject::String(key), MontyObject::String(value)) if key == name => Some(value.clone()),
        (MontyObject::String(key), MontyObject::Int(value)) if key == name => Some(value.to_string()),
        (MontyObject::String(key), MontyObject::Float(value)) if key == name => Some(value.to_string()),
        _ => None,
    })
}

/// `open`, `pathlib.Path`'s file methods and `os` file calls, over the same `fs`
/// host capability JavaScript's `fs` uses: the session's workspace is the current
/// directory, and mounts are directories in it. Paths are relative (an absolute one
/// is refused, as in JavaScript). Errors are Python's: `FileNotFoundError`,
/// `FileExistsError`, `IsADirectoryError`, `NotADirectoryError`, `PermissionError`
/// (no file access, a read-only mount, a path leading outside), `OSError` (a
/// quota, with its POSIX code).
fn file_call(run: &mut Run, call: OsFunctionCall) -> Result<MontyObject, MontyException> {
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD;
    match call {
        OsFunctionCall::Exists(path) => fs(run, "exists", json!({ "path": path.as_str() })),
        OsFunctionCall::IsFile(path) => Ok(MontyObject::Bool(kind_of(run, path.as_str())? == Some(false))),
        OsFunctionCall::IsDir(path) => Ok(MontyObject::Bool(kind_of(run, path.as_str())? == Some(true))),
        // The host follows no symbolic link, and shows none.
        OsFunctionCall::IsSymlink(_) => Ok(MontyObject::Bool(false)),
        OsFunctionCall::ReadText(path) => fs(run, "readFile", json!({ "path": path.as_str(), "encoding": "utf8" })),
        OsFunctionCall::ReadBytes(path) => {
            match fs(run, "readFile", json!({ "path": path.as_str(), "encoding": "base64" }))? {
                MontyObject::String(text) => b64.decode(text).map(MontyObject::Bytes).map_err(|_| {
                    MontyException::new(ExcType::RuntimeError, Some("the host's file bytes cannot be read".into()))
                }),
                _ => {
                    Err(MontyException::new(ExcType::RuntimeError, Some("the host's file bytes cannot be read".into())))
                }
            }
        }
        OsFunctionCall::WriteText(args) => {
            write(run, args.path.as_str(), &args.data, "utf8", false, args.data.chars().count())
        }
        OsFunctionCall::AppendText(args) => {
            write(run, args.path.as_str(), &args.data, "utf8", true, args.data.chars().count())
        }
        OsFunctionCall::WriteBytes(args) => {
            write(run, args.path.as_str(), &b64.encode(&args.data), "base64", false, args.data.len())
        }
        OsFunctionCall::AppendBytes(args) => {
            write(run, args.path.as_str(), &b64.encode(&args.data), "base64", true, args.data.len())
        }
        OsFunctionCall::Stat(path) => {
            let stat = fs(run, "stat", json!({ "path": path.as_str() }))?;
            let size = stat_field(&stat, "size").and_then(|s| s.parse().ok()).unwrap_or(0);
            let mtime = stat_field(&stat, "mtimeMs").and_then(|s| s.parse::<f64>().ok()).unwrap_or(0.0) / 1000.0;
            Ok(match stat_field(&stat, "type").as_deref() {
                Some("directory") => monty_types::dir_stat(0o755, mtime),
                _ => monty_types::file_stat(0o644, size, mtime),
            })
        }
        OsFunctionCall::Iterdir(path) => {
            let names = fs(run, "readdir", json!({ "path": path.as_str() }))?;
            let MontyObject::List(names) = names else { return Ok(MontyObject::List(Vec::new())) };
            let base = normal(path.as_str());
            Ok(MontyObject::List(
                names
                    .into_iter()
                    .filter_map(|name| match name {
                        MontyObject::String(name) if base == "." => Some(MontyObject::Path(name)),
                        MontyObject::String(name) => Some(MontyObject::Path(format!("{base}/{name}"))),
                        _ => None,
                    })
                    .collect(),
            ))
        }
        // Paths are relative to the workspace, so a resolved path is the normal form
        // of the relative one.
        OsFunctionCall::Resolve(path) | OsFunctionCall::Absolute(path) => Ok(MontyObject::Path(normal(path.as_str()))),
        OsFunctionCall::Mkdir(args) => {
            let path = args.path.as_str();
            if args.exist_ok || args.parents {
                match kind_of(run, path)? {
                    Some(true) if args.exist_ok => return Ok(MontyObject::None),
                    Some(_) => {
                        return Err(run.host_error("file_error", &format!("EEXIST: already exists, mkdir '{path}'")))
                    }
                    None => {}
                }
            }
            fs(run, "mkdir", json!({ "path": path, "recursive": args.parents })).map(|_| MontyObject::None)
        }
        OsFunctionCall::Unlink(path) => fs(run, "rm", json!({ "path": path.as_str() })).map(|_| MontyObject::None),
        OsFunctionCall::Rmdir(path) => fs(run, "rmdir", json!({ "path": path.as_str() })).map(|_| MontyObject::None),
        OsFunctionCall::Rename(args) => {
            fs(run, "rename", json!({ "path": args.src.as_str(), "to": args.dst.as_str() })).map(|_| MontyObject::None)
        }
        OsFunctionCall::Open(args) => {
            let path = args.path.as_str();
            match args.mode {
                FileMode::Read(_) | FileMode::ReadUpdate(_) => match kind_of(run, path)? {
                    Some(false) => {}
                    Some(true) => {
                        return Err(run.host_error("file_error", &format!("EISDIR: is a directory, open '{path}'")))
                    }
                    None => {
                        return Err(
                            run.host_error("file_error", &format!("ENOENT: no such file or directory, open '{path}'"))
                        )
                    }
                },
                FileMode::Write(_) | FileMode::WriteUpdate(_) => {
                    write(run, path, "", "utf8", false, 0)?;
                }
                FileMode::Append(_) | FileMode::AppendUpdate(_) => {
                    write(run, path, "", "utf8", true, 0)?;
                }
            }
            Ok(MontyObject::FileHandle(MontyFileHandle { path: path.to_string(), mode: args.mode, position: 0 }))
        }
        other => Err(other.on_no_handler()),
    }
}

/// Writes (or appends) `data` in `encoding`; Python's answer is how much it wrote.
fn write(
    run: &mut Run,
    path: &str,
    data: &str,
    encoding: &str,
    append: bool,
    written: usize,
) -> Result<MontyObject, MontyException> {
    fs(run, "writeFile", json!({ "path": path, "data": data, "encoding": encoding, "append": append }))?;
    Ok(MontyObject::Int(written as i64))
}

/// `path` with `.` parts and repeated slashes dropped (`..` is left for the host to
/// refuse); `.` for the workspace itself.
fn normal(path: &str) -> String {
    let parts: Vec<&str> = path.split('/').filter(|p| !p.is_empty() && *p != ".").collect();
    if parts.is_empty() {
        ".".to_string()
    } else {
        format!("{}{}", if path.starts_with('/') { "/" } else { "" }, parts.join("/"))
    }
}
