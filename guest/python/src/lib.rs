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
//! There is no file or OS access.
//!
//! Monty suspends at every host call (`RunProgress::FunctionCall`): the guest starts
//! the host call and resumes with a pending future; when every task waits
//! (`ResolveFutures`) it blocks in the host's `wait` for the first reply and resolves
//! that future. Attribute lookups on the host objects `tools` and `model`
//! (`NameLookup`) name the server and tool.
//!
//! Exports: `wizer-initialize` (build time only) and `run`.

use std::borrow::Cow;
use std::collections::HashMap;

use monty::{MontyRun, RunProgress};
use monty_types::{
    CompileOptions, DictPairs, ExcType, ExtFunctionResult, MontyClassInstance, MontyClassType, MontyException,
    MontyObject, MontyUuid, NameLookupResult, PrintWriter, PrintWriterCallback, ResourceLimits, ResourceTracker,
};
use sandgate_guest_abi as abi;
use serde_json::Value;

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
struct Run {
    console: Console,
    /// Server objects handed out: id → server name.
    servers: HashMap<MontyUuid, String>,
    /// Host call id → Monty call id, for calls in flight.
    calls: HashMap<u32, u32>,
    /// Errors made from host replies, with the kind the host gave each: an uncaught
    /// one is reported with that kind.
    host_errors: Vec<(ExcType, String, String)>,
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
            _ => ExcType::RuntimeError,
        };
        self.host_errors.push((exc_type, message.to_string(), kind.to_string()));
        MontyException::new(exc_type, Some(message.to_string()))
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

/// The error object for an exception that ended the run.
fn describe(exception: &MontyException, run: &Run, syntax: bool) -> String {
    let exc_type = exception.exc_type();
    let message = exception.message().unwrap_or_default().to_string();
    let kind = if syntax {
        "syntax".to_string()
    } else {
        run.host_errors
            .iter()
            .find(|(t, m, _)| *t == exc_type && *m == message)
            .map_or_else(|| "exception".to_string(), |(_, _, kind)| kind.clone())
    };
    let mut error = serde_json::Map::new();
    error.insert("kind".into(), Value::String(kind));
    let name: &'static str = exc_type.into();
    error.insert("name".into(), Value::String(name.to_string()));
    let shown = if message.is_empty() { name.to_string() } else { message };
    error.insert("message".into(), Value::String(shown));
    if let Some(frame) = exception.traceback().iter().rev().find(|f| f.filename == FILENAME) {
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
        Run { console: Console::default(), servers: HashMap::new(), calls: HashMap::new(), host_errors: Vec::new() };
    let names = vec!["input".to_string(), "tools".to_string(), "model".to_string(), "console".to_string()];
    let runner = match MontyRun::new(code, FILENAME, names, CompileOptions::default()) {
        Ok(runner) => runner,
        Err(exception) => return abi::finish(1, &describe(&exception, &run, true)),
    };
    let inputs = vec![input, host_object("tools", TOOLS), host_object("model", MODEL), host_object("console", CONSOLE)];
    let limits = ResourceLimits { max_suspensions: usize::MAX, ..ResourceLimits::default() };
    let progress = runner.start(inputs, ResourceTracker::new(limits), PrintWriter::Callback(&mut run.console));
    let outcome = drive(&mut run, progress);
    run.console.flush();
    match outcome {
        Ok(value) => match to_json(&value) {
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
        Err(exception) => abi::finish(1, &describe(&exception, &run, false)),
    }
}

/// Drives the interpreter through its suspensions to the end.
fn drive(run: &mut Run, mut progress: Result<RunProgress, MontyException>) -> Result<MontyObject, MontyException> {
    loop {
        progress = match progress? {
            RunProgress::Complete(value) => return Ok(value),
            RunProgress::FunctionCall(call)
                if call.object_id == Some(CONSOLE) || call.function_name.starts_with("console.") =>
            {
                let method = call.function_name.strip_prefix("console.").unwrap_or(&call.function_name);
                let result = match console_level(method) {
                    Some(level) => {
                        run.console.flush();
                        let line: Vec<String> = call.args.iter().map(shown).collect();
                        abi::log(level, &line.join(" "));
                        ExtFunctionResult::Return(MontyObject::None)
                    }
                    None => ExtFunctionResult::Error(MontyException::new(
                        ExcType::AttributeError,
                        Some(format!("'console' object has no attribute '{method}'")),
                    )),
                };
                call.resume(result, PrintWriter::Callback(&mut run.console))
            }
            RunProgress::FunctionCall(call) => {
                let Some(name) = run.call_name(call.object_id, &call.function_name) else {
                    let error = MontyException::new(
                        ExcType::NameError,
                        Some(format!("name '{}' is not defined", call.function_name)),
                    );
                    progress = call.resume(ExtFunctionResult::Error(error), PrintWriter::Callback(&mut run.console));
                    continue;
                };
                let args = match call_args(&call.args, &call.kwargs) {
                    Ok(args) => args.to_string(),
                    Err(why) => {
                        let error = MontyException::new(ExcType::TypeError, Some(format!("{name}(): {why}")));
                        progress =
                            call.resume(ExtFunctionResult::Error(error), PrintWriter::Callback(&mut run.console));
                        continue;
                    }
                };
                let id = abi::call(&name, &args);
                if id <= 0 {
                    let error = MontyException::new(
                        ExcType::RuntimeError,
                        Some("host call limit reached for this execution".into()),
                    );
                    progress = call.resume(ExtFunctionResult::Error(error), PrintWriter::Callback(&mut run.console));
                    continue;
                }
                run.calls.insert(id as u32, call.call_id);
                call.resume_pending(PrintWriter::Callback(&mut run.console))
            }
            RunProgress::NameLookup(lookup) => {
                let result = match lookup.object_id() {
                    Some(id) if id == TOOLS => NameLookupResult::Value(run.server_object(&lookup.name)),
                    Some(id) if id == CONSOLE => match console_level(&lookup.name) {
                        Some(_) => NameLookupResult::Value(MontyObject::Function {
                            name: format!("console.{}", lookup.name),
                            docstring: None,
                        }),
                        None => NameLookupResult::Undefined,
                    },
                    Some(id) => match run.call_name(Some(id), &lookup.name) {
                        Some(name) => NameLookupResult::Value(MontyObject::Function { name, docstring: None }),
                        None => NameLookupResult::Undefined,
                    },
                    None => NameLookupResult::Undefined,
                };
                lookup.resume(result, PrintWriter::Callback(&mut run.console))
            }
            RunProgress::ResolveFutures(pending) => {
                let Some((host_id, reply)) = abi::wait() else {
                    abi::fail(
                        "unsettled",
                        "the code awaits a call that can never complete: no host call is in flight",
                        None,
                    );
                    return Err(MontyException::new(ExcType::RuntimeError, Some("unsettled".into())));
                };
                let Some(call_id) = run.calls.remove(&host_id) else {
                    progress = Ok(RunProgress::ResolveFutures(pending));
                    continue;
                };
                if !pending.pending_call_ids().contains(&call_id) {
                    progress = Ok(RunProgress::ResolveFutures(pending));
                    continue;
                }
                let result = match serde_json::from_str::<Value>(&reply) {
                    Ok(Value::Object(reply)) => match (reply.get("ok"), reply.get("error")) {
                        (_, Some(error)) => {
                            let kind = error["kind"].as_str().unwrap_or("tool_error");
                            let message = error["message"].as_str().unwrap_or("the call failed");
                            ExtFunctionResult::Error(run.host_error(kind, message))
                        }
                        (Some(value), None) => ExtFunctionResult::Return(from_json(value)),
                        (None, None) => ExtFunctionResult::Return(MontyObject::None),
                    },
                    _ => ExtFunctionResult::Error(MontyException::new(
                        ExcType::RuntimeError,
                        Some("the host's reply cannot be read".into()),
                    )),
                };
                pending.resume(vec![(call_id, result)], PrintWriter::Callback(&mut run.console))
            }
            RunProgress::OsCall(os) => {
                let error = MontyException::new(
                    ExcType::PermissionError,
                    Some("there is no file or OS access from Python in sandgate".into()),
                );
                os.resume(ExtFunctionResult::Error(error), PrintWriter::Callback(&mut run.console))
            }
        };
    }
}
