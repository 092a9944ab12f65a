//! The sandgate guest: QuickJS compiled to `wasm32-wasip1`.
//!
//! The host pre-initialises this module once at build time (`wizer-initialize` creates
//! the QuickJS runtime and context and evaluates the JavaScript prelude), so every
//! execution starts from the same snapshot and pays no engine start-up. The host then
//! calls `run` once per fresh instance.
//!
//! # Host ABI, version 1
//!
//! Every door out of the guest is an import from the module `sandgate_v1`. Pointers
//! and lengths are in this module's linear memory; all text is UTF-8.
//!
//! | import | meaning |
//! |---|---|
//! | `request_len(which) -> i32` | length of request part `which`: 0 = code, 1 = `input` as JSON (0 bytes: none), 2 = the code's language (`javascript` or `typescript`), 3 = the mode (`session`, or empty) |
//! | `request_read(which, ptr, len) -> i32` | copy that part to `ptr`; returns bytes written |
//! | `max_result() -> i32` | the largest result, in bytes, the host will accept |
//! | `log(level, ptr, len)` | one console line (0 log, 1 info, 2 warn, 3 error); the host traps when the output cap is passed |
//! | `call(name_ptr, name_len, args_ptr, args_len) -> i32` | start a host call (`name` such as `tools.server.tool`, `args` JSON); returns its id (> 0), or a negative code: -1 call limit reached |
//! | `wait() -> i64` | block until a call completes: `(id << 32) \| length` of its reply; -1 when no call is in flight; -2 when every call in flight is held (see Pausing) |
//! | `reply_read(id, ptr, len) -> i32` | copy the reply of a completed call: `{"ok": value}` or `{"error": {"kind", "message"}}` |
//! | `source_ready()` | the code is JavaScript now (TypeScript types are stripped); the host ends the preparation phase and its tighter limits |
//! | `finish(status, ptr, len)` | the outcome: status 0 with the result as JSON, 1 with an error object `{kind, message, name?, line?, column?, stack?}`, 2 with a message when the guest runtime itself failed |
//!
//! # Preparation phase
//!
//! Until `source_ready`, the guest is turning TypeScript into JavaScript
//! ([`sandgate_typescript::strip_types`]). The parser's work on hostile input can grow
//! faster than the input (`a<a<a<…`), so the host runs this phase under a fuel and
//! memory budget of its own, sized by the code's length, and reports passing it as a
//! `syntax` error. The wasm stack limit bounds the parser's recursion the same way.
//!
//! From WASI the guest uses only `random_get` (to reseed `Math.random` per run),
//! `clock_time_get` (`Date.now()`) and the bookkeeping calls of the C and Rust
//! runtimes; the host grants no files, environment, arguments or sockets.
//!
//! # Sessions
//!
//! In mode `session` the code is evaluated as one global script with top-level await,
//! by the language's own rules: its declarations (`let`, `const`, `function`,
//! `class`) stay in the realm, and its completion value is the result, as in a REPL.
//! A top-level `return` still gives the result, as outside a session: a script cannot
//! return, so such a `return` is rewritten to end the script with its value
//! ([`sandgate_typescript::session_script`]).
//! Everything the guest keeps lives in its linear memory, and `run` returns with the
//! stack where it started, so the host carries a session from one execution to the
//! next by saving the memory after one `run` and writing it back before the next.
//!
//! # Pausing
//!
//! A call can be held outside the execution, waiting for a person to approve it.
//! When nothing else is in flight, `wait` returns -2: the guest keeps the code's
//! promise (a persistent handle in the realm) and returns from `run` without
//! `finish`. The stack is where it started and every other thing the code holds is in
//! linear memory, so the host saves that memory and, later and on any replica, writes
//! it into a fresh instance and calls `resume`, which goes on waiting where `run`
//! stopped: no code runs twice and no call is made again.
//!
//! Exports: `wizer-initialize` (build time only), `run` and `resume`.

use std::cell::{Cell, RefCell};

use rquickjs::context::EvalOptions;
use rquickjs::{Array, Context, Ctx, Function, Persistent, Promise, Runtime, Value};

use sandgate_guest_abi as abi;
use sandgate_guest_abi::{fail, fault, finish};

/// QuickJS's stack limit, below the 2 MiB shadow stack the guest is linked with (see
/// [`enable_stack_check`]).
const JS_STACK_BYTES: usize = 1536 * 1024;

struct State {
    // Field order matters: the functions must drop before the context and runtime.
    run: Persistent<Function<'static>>,
    complete: Persistent<Function<'static>>,
    eval_script: Persistent<Function<'static>>,
    context: Context,
    _runtime: Runtime,
}

thread_local! {
    static STATE: RefCell<Option<State>> = const { RefCell::new(None) };
    /// The code's promise while the execution is paused (see Pausing).
    static PAUSED: RefCell<Option<Persistent<Promise<'static>>>> = const { RefCell::new(None) };
    static RANDOM: Cell<u64> = const { Cell::new(0x853c_49e6_748f_ea9b) };
}

/// wyrand: a small, fast generator; seeded from WASI at the start of every run so a
/// snapshot never replays the same sequence.
fn next_random() -> f64 {
    RANDOM.with(|state| {
        let s = state.get().wrapping_add(0xa076_1d64_78bd_642f);
        state.set(s);
        let t = (s as u128).wrapping_mul((s ^ 0xe703_7ed1_a0b4_28db) as u128);
        let x = ((t >> 64) as u64) ^ (t as u64);
        (x >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    })
}

fn reseed() {
    RANDOM.with(|state| state.set(abi::random_seed()));
}

fn host_call<'js>(ctx: Ctx<'js>, name: String, args: String) -> rquickjs::Result<i32> {
    let id = abi::call(&name, &args);
    if id > 0 {
        return Ok(id);
    }
    let message = match id {
        -1 => "host call limit reached for this execution",
        _ => "host call refused",
    };
    Err(rquickjs::Exception::throw_range(&ctx, message))
}

fn host_log(level: u32, line: String) {
    abi::log(level, &line)
}

/// Turns on QuickJS's own stack check, so deep recursion throws a catchable
/// `RangeError` instead of overflowing the stack.
///
/// QuickJS measures its C stack through the address of its frames, which in wasm is
/// the shadow stack in linear memory (where its interpreter frames live). quickjs-ng
/// compiles the check out on WASI (`update_stack_limit` leaves `stack_limit` at 0),
/// and without it deep recursion runs the shadow stack below address 0, a memory
/// fault. So this sets the runtime's `stack_limit` itself: `JS_SetMaxStackSize`
/// stores a marker in `stack_size`, the field is found by that marker, and the limit
/// two words after it (`stack_size`, `stack_top`, `stack_limit` are consecutive in
/// `JSRuntime`) is set `JS_STACK_BYTES` below the current frame. The layout is
/// checked here, so a QuickJS upgrade that moves the fields fails the guest build,
/// and the integration tests recurse until the check fires.
fn enable_stack_check(context: &Context) {
    const MARKER: usize = 0x5A6A_7B8C;
    let here = 0u8;
    let top = std::hint::black_box(&here) as *const u8 as usize;
    // SAFETY: `rt` is the live runtime this context belongs to. The scan reads
    // `usize` words from the start of the `JSRuntime` allocation and stops at the first
    // word holding the marker, which is its `stack_size` field, so it reads only
    // inside the struct; the write is to `stack_limit`, two words on, after the
    // layout checks below.
    unsafe {
        let rt = rquickjs::qjs::JS_GetRuntime(context.as_raw().as_ptr());
        rquickjs::qjs::JS_SetMaxStackSize(rt, MARKER as _);
        let words = rt.cast::<usize>();
        let field = (0..1024).find(|&i| words.add(i).read() == MARKER).expect("JSRuntime has a stack_size field");
        assert!(
            words.add(field + 1).read() != 0 && words.add(field + 2).read() == 0,
            "JSRuntime's stack fields are laid out as quickjs-ng 0.16 has them"
        );
        words.add(field).write(JS_STACK_BYTES);
        words.add(field + 2).write(top - JS_STACK_BYTES);
    }
}

fn init_state() -> rquickjs::Result<State> {
    let runtime = Runtime::new()?;
    let context = Context::full(&runtime)?;
    enable_stack_check(&context);
    let (run, complete, eval_script) = context.with(|ctx| -> rquickjs::Result<_> {
        let setup: Function = ctx.eval(include_str!("prelude.js"))?;
        let call = Function::new(ctx.clone(), host_call)?;
        let log = Function::new(ctx.clone(), host_log)?;
        let random = Function::new(ctx.clone(), next_random)?.with_name("random")?;
        let pair: Array = setup.call((call, log, random))?;
        let (run, complete): (Function, Function) = (pair.get(0)?, pair.get(1)?);
        let eval_script = Function::new(ctx.clone(), eval_script)?;
        Ok((Persistent::save(&ctx, run), Persistent::save(&ctx, complete), Persistent::save(&ctx, eval_script)))
    })?;
    Ok(State { run, complete, eval_script, context, _runtime: runtime })
}

/// A session's code as one global script with top-level await: a promise of
/// `{value}`, the script's completion value. Syntax errors throw at once.
fn eval_script<'js>(ctx: Ctx<'js>, code: String) -> rquickjs::Result<Value<'js>> {
    let mut options = EvalOptions::default();
    options.global = true;
    options.strict = false;
    options.promise = true;
    // Positions in errors read `<input>:line:column`, as for every other execution.
    options.filename = Some("<input>".into());
    ctx.eval_with_options(code, options)
}

/// Build-time initialisation: everything done here is captured in the snapshot.
#[export_name = "wizer-initialize"]
pub extern "C" fn wizer_initialize() {
    let state = init_state().expect("the guest prelude must evaluate");
    // Run the garbage collector so the snapshot carries no garbage.
    state.context.with(|ctx| ctx.run_gc());
    STATE.with(|slot| *slot.borrow_mut() = Some(state));
}

/// Runs the request the host holds and reports its outcome through `finish`.
#[no_mangle]
pub extern "C" fn run() {
    reseed();
    STATE.with(|slot| {
        let slot = slot.borrow();
        let Some(state) = slot.as_ref() else {
            fault("guest was not pre-initialised");
            return;
        };
        let Some(code) = prepare() else { return };
        state.context.with(|ctx| {
            // The prelude settles every outcome itself, so an error here means the
            // code left the realm unable to report; it is still the code's failure.
            if let Err(error) = drive(&ctx, state, code) {
                let message = describe(&ctx, error);
                fail("exception", &format!("the code's outcome could not be reported: {message}"), None);
            }
        });
    });
}

/// The code as JavaScript: TypeScript has its types stripped. `None` when it cannot
/// be, after reporting why. Ends the preparation phase either way.
fn prepare() -> Option<String> {
    let code = abi::request(abi::CODE);
    let prepared = match abi::request(abi::LANGUAGE).as_str() {
        "typescript" => sandgate_typescript::strip_types(&code).map_err(|error| {
            fail("syntax", &error.message, Some((error.line, error.column)));
        }),
        _ => Ok(code),
    };
    // A session's code is a global script, which cannot `return`: a top-level return
    // is rewritten to end the script with its value (see `session_script`).
    let prepared = prepared.map(|code| match abi::request(abi::MODE).as_str() {
        "session" => sandgate_typescript::session_script(&code).unwrap_or(code),
        _ => code,
    });
    abi::source_ready();
    prepared.ok()
}

fn drive<'js>(ctx: &Ctx<'js>, state: &State, code: String) -> rquickjs::Result<()> {
    let input = abi::request(abi::INPUT);
    let max_result = abi::max_result();
    let run = state.run.clone().restore(ctx)?;
    let eval_script = match abi::request(abi::MODE).as_str() {
        "session" => Some(state.eval_script.clone().restore(ctx)?),
        _ => None,
    };
    let promise: Promise = run.call((code, input, max_result, eval_script))?;
    settle(ctx, state, promise)
}

/// Runs jobs and hands replies in until the code's promise settles, then reports its
/// outcome; or, when the host pauses the execution, keeps the promise and returns.
fn settle<'js>(ctx: &Ctx<'js>, state: &State, promise: Promise<'js>) -> rquickjs::Result<()> {
    let complete = state.complete.clone().restore(ctx)?;
    loop {
        while ctx.execute_pending_job() {}
        if let Some(outcome) = promise.result::<Array>() {
            let outcome = outcome?;
            let (ok, text): (bool, String) = (outcome.get(0)?, outcome.get(1)?);
            finish(if ok { 0 } else { 1 }, &text);
            return Ok(());
        }
        match abi::wait() {
            abi::Wait::Reply(id, reply) => {
                let _: Value = complete.call((id as i32, reply))?;
            }
            abi::Wait::Idle => {
                fail(
                    "unsettled",
                    "the code's promise can never settle: no host call is in flight and no job is queued",
                    None,
                );
                return Ok(());
            }
            abi::Wait::Pause => {
                let kept = Persistent::save(ctx, promise);
                PAUSED.with(|paused| *paused.borrow_mut() = Some(kept));
                return Ok(());
            }
        }
    }
}

/// Goes on with a paused execution (see Pausing), reporting its outcome through
/// `finish` or pausing again.
#[no_mangle]
pub extern "C" fn resume() {
    reseed();
    STATE.with(|slot| {
        let slot = slot.borrow();
        let Some(state) = slot.as_ref() else {
            fault("guest was not pre-initialised");
            return;
        };
        let Some(paused) = PAUSED.with(|paused| paused.borrow_mut().take()) else {
            fault("there is no paused execution to resume");
            return;
        };
        state.context.with(|ctx| {
            let settled = paused.restore(&ctx).and_then(|promise| settle(&ctx, state, promise));
            if let Err(error) = settled {
                let message = describe(&ctx, error);
                fail("exception", &format!("the code's outcome could not be reported: {message}"), None);
            }
        });
    });
}

fn describe<'js>(ctx: &Ctx<'js>, error: rquickjs::Error) -> String {
    if let rquickjs::Error::Exception = error {
        let value = ctx.catch();
        if let Some(exception) = value.as_exception() {
            return exception.message().unwrap_or_else(|| "exception".into());
        }
        return format!("{value:?}");
    }
    error.to_string()
}
