//! The two compilers' code: Winch's, which serves the first executions after a start
//! on an empty compile cache, keeps every limit and gives the same results as
//! Cranelift's; a server moves to Cranelift's code once it is compiled and cached; a
//! session's memory and a paused execution go on from one to the other.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use sandgate::limits::Limits;
use sandgate::request::Language;
use sandgate::sandbox::{Compiler, Job, Outcome, Sandbox, SandboxConfig};
use serde_json::{json, Value};

use crate::harness::{cache_dir, temp_dir};
use crate::pauses::{kept, resume, start, Counted, JS, PYTHON};

fn sandbox(compiler: Compiler, cache: Option<std::path::PathBuf>) -> Sandbox {
    let config = SandboxConfig { compiler, cache_dir: cache, ..sandgate::config::Config::default().sandbox };
    Sandbox::new(config).expect("the sandbox builds")
}

fn baseline() -> Sandbox {
    sandbox(Compiler::Baseline, None)
}

fn optimizing() -> Sandbox {
    sandbox(Compiler::Optimizing, Some(cache_dir().into()))
}

async fn run(sandbox: &Sandbox, code: &str, language: Language, limits: Limits) -> Outcome {
    sandbox.execute(Job::new(code, language, limits), None).await.expect("the execution runs")
}

fn result(outcome: &Outcome) -> Value {
    assert!(outcome.ok, "{:?}", outcome.error);
    serde_json::from_str(outcome.result.as_ref().map_or("null", |r| r.get())).unwrap()
}

fn kind(outcome: &Outcome) -> &str {
    outcome.error.as_ref().map_or("", |error| error.kind.as_str())
}

#[tokio::test]
async fn winch_code_keeps_every_limit() {
    let sandbox = baseline();
    assert_eq!(sandbox.optimized(Language::Javascript, false), Some(false));
    let limits = Limits { wall_ms: 10_000, ..Limits::default() };
    let js = |code: &'static str| run(&sandbox, code, Language::Javascript, limits);

    assert_eq!(result(&js("return 1 + 1").await), json!(2));
    // Deep recursion ends at QuickJS's own check, a catchable RangeError, on Winch's
    // larger frames too.
    let recursion = "function f(n) { return n === 0 ? 0 : 1 + f(n - 1) }\nreturn f(3000)";
    assert_eq!(result(&js(recursion).await), json!(3000));
    for code in [
        "function f(n) { return f(n + 1) + 1 }\ntry { f(0) } catch (e) { return e instanceof RangeError }",
        "function f(a, b, c, d, e, f1, g, h) { const x = [a, b, c]; return f(a, b, c, d, e, f1, g, h) + x.length }\ntry { f(1,2,3,4,5,6,7,8) } catch (e) { return e instanceof RangeError }",
        "function f(xs) { return [xs].map(f) }\ntry { f([]) } catch (e) { return e instanceof RangeError }",
    ] {
        assert_eq!(result(&js(code).await), json!(true), "{code}");
    }
    // Recursion inside a built-in: QuickJS's check or the native stack, never a fault.
    let nested = js("return JSON.parse('['.repeat(200000))").await;
    let error = nested.error.as_ref().expect("too deep");
    assert!(
        error.kind.as_str() == "stack_overflow"
            || (error.kind.as_str() == "exception" && error.name.as_deref() == Some("RangeError")),
        "{error:?}"
    );

    // Fuel, wall clock, memory.
    let spin = run(&sandbox, "while (true) {}", Language::Javascript, Limits { fuel: 10_000_000, ..limits }).await;
    assert_eq!(kind(&spin), "out_of_fuel");
    assert!(spin.usage.fuel <= 10_000_000 + 100_000, "{:?}", spin.usage);
    let slow = run(&sandbox, "while (true) {}", Language::Javascript, Limits { wall_ms: 200, ..limits }).await;
    assert_eq!(kind(&slow), "timeout");
    assert!(slow.usage.wall_ms < 2_000, "{:?}", slow.usage);
    let hungry = "const a = []; while (true) a.push('x'.repeat(1 << 20))";
    let hungry = run(&sandbox, hungry, Language::Javascript, Limits { memory_bytes: 32 << 20, ..limits }).await;
    assert_eq!(kind(&hungry), "out_of_memory");
    assert!(hungry.usage.memory_bytes <= 32 << 20, "{:?}", hungry.usage);

    // Python likewise.
    assert_eq!(result(&run(&sandbox, "1 + 1", Language::Python, limits).await), json!(2));
    assert_eq!(sandbox.optimized(Language::Python, false), Some(false));
    let deep = run(&sandbox, "def r(n):\n    return r(n + 1)\nr(0)", Language::Python, limits).await;
    let error = deep.error.expect("too deep");
    assert_eq!((error.kind.as_str(), error.name.as_deref()), ("exception", Some("RecursionError")), "{error:?}");
    let spin = run(&sandbox, "while True:\n    pass", Language::Python, Limits { fuel: 10_000_000, ..limits }).await;
    assert_eq!(kind(&spin), "out_of_fuel");
}

#[tokio::test]
async fn both_compilers_give_the_same_results_for_the_same_fuel() {
    let (quick, optimized) = (baseline(), optimizing());
    let limits = Limits::default();
    for (language, code) in [
        (Language::Javascript, "return 1"),
        (Language::Javascript, "let s = 0; for (let i = 0; i < 100000; i++) s += i % 7; return s"),
        (Language::Javascript, "return [3, 1, 2].sort().map(String).join('-') + JSON.stringify({a: [1, {b: 2}]})"),
        (Language::Typescript, "const n: number = 2; return n ** 10"),
        (Language::Python, "sum(i % 7 for i in range(10000))"),
        // Monty copies the strings with `memory.copy`: charged by the byte on both.
        (Language::Python, "s = 'x' * 1000000\nt = s + s + s\nlen(t)"),
    ] {
        let (a, b) = (run(&quick, code, language, limits).await, run(&optimized, code, language, limits).await);
        assert_eq!(result(&a), result(&b), "{code}");
        assert_eq!(a.usage.fuel, b.usage.fuel, "{code}: Winch's code against Cranelift's");
    }
    let copies = run(&quick, "s = 'x' * 1000000\nt = s + s + s\nlen(t)", Language::Python, limits).await;
    assert!(copies.usage.fuel > 4_000_000, "four megabytes written: {:?}", copies.usage);
    // A loop of large copies runs out of fuel on Winch's code as on Cranelift's.
    let code = "s = 'x' * 4000000\nwhile True:\n    t = s + s";
    for sandbox in [&quick, &optimized] {
        let spin = run(sandbox, code, Language::Python, Limits { fuel: 200_000_000, ..limits }).await;
        assert_eq!(kind(&spin), "out_of_fuel", "{:?}", spin.error);
    }
}

#[tokio::test]
async fn a_start_on_an_empty_cache_serves_at_once_and_moves_to_optimised_code() {
    let cache = temp_dir("tiers-cache");
    let first = sandbox(Compiler::Tiered, Some(cache.clone()));
    // Cranelift takes a second or more; the guest is served before.
    assert_eq!(first.optimized(Language::Javascript, false), Some(false));
    assert_eq!(first.optimized(Language::Javascript, true), None, "the session guest is made on first use");
    let limits = Limits::default();
    assert_eq!(result(&run(&first, "return 6 * 7", Language::Javascript, limits).await), json!(42));
    assert_eq!(result(&run(&first, "6 * 7", Language::Python, limits).await), json!(42));
    first.session_memory(Language::Javascript, 0, []).await.expect("the session guest loads");

    first.settle();
    for (language, session) in [(Language::Javascript, false), (Language::Python, false), (Language::Javascript, true)]
    {
        assert_eq!(first.optimized(language, session), Some(true), "{language:?}, session: {session}");
    }
    let artifacts = std::fs::read_dir(&cache).unwrap().filter(|entry| entry.is_ok()).count();
    assert_eq!(artifacts, 3, "each guest's optimised code is in the cache");
    assert_eq!(result(&run(&first, "return 6 * 7", Language::Javascript, limits).await), json!(42));
    assert_eq!(result(&run(&first, "6 * 7", Language::Python, limits).await), json!(42));

    // The next start finds it there and never compiles with Winch.
    let again = sandbox(Compiler::Tiered, Some(cache));
    assert_eq!(again.optimized(Language::Javascript, false), Some(true));
    assert_eq!(result(&run(&again, "6 * 7", Language::Python, limits).await), json!(42));
    assert_eq!(again.optimized(Language::Python, false), Some(true));
}

#[tokio::test]
async fn a_session_and_a_paused_execution_go_on_under_the_other_compiler() {
    let (quick, optimized) = (baseline(), optimizing());
    let limits = Limits::default();
    for (language, first, then) in
        [(Language::Javascript, "var x = 41", "return x + 1"), (Language::Python, "x = 41", "x + 1")]
    {
        for (from, to) in [(&quick, &optimized), (&optimized, &quick)] {
            let memory = Arc::new(from.session_memory(language, 0, []).await.unwrap());
            let job = Job { session: Some(memory.clone()), ..Job::new(first, language, limits) };
            let outcome = from.execute(job, None).await.unwrap();
            assert!(outcome.ok, "{language:?}: {:?}", outcome.error);
            let written = outcome.session_image.expect("the pages it wrote");
            memory.apply(&written).unwrap();
            // Made again from its pages on the other compiler's code, as on another replica.
            let moved = to.session_memory(language, memory.size(), written.chunks()).await.unwrap();
            let job = Job { session: Some(Arc::new(moved)), ..Job::new(then, language, limits) };
            assert_eq!(result(&to.execute(job, None).await.unwrap()), json!(42), "{language:?}");
        }
    }
    for (language, code) in [(Language::Javascript, JS), (Language::Python, PYTHON)] {
        for (from, to) in [(&quick, &optimized), (&optimized, &quick)] {
            let counted = Arc::new(Counted::default());
            let paused = kept(&start(from, code, language, &counted).await);
            let held = paused.held[0].id;
            let done = resume(to, paused, vec![(held, Ok("approval-1".into()))], &counted).await;
            let result = result(&done);
            assert_eq!((result["a"].clone(), result["c"].clone()), (json!(1), json!(3)), "{language:?}: {result}");
            assert_eq!(result["b"]["cleared"], "approval-1", "{language:?}: {result}");
            assert_eq!(counted.echo.load(Ordering::SeqCst), 2, "{language:?}: no call made twice");
            assert_eq!(counted.guarded.load(Ordering::SeqCst), 1, "{language:?}");
        }
    }
}

/// The `.cwasm` artifacts in `dir`.
fn artifacts(dir: &std::path::Path) -> usize {
    std::fs::read_dir(dir).map_or(0, |entries| {
        entries.filter_map(Result::ok).filter(|entry| entry.path().extension().is_some_and(|e| e == "cwasm")).count()
    })
}

#[tokio::test]
async fn the_binary_on_an_empty_cache_answers_then_leaves_the_optimised_code_cached() {
    use std::io::Write;
    use std::process::Stdio;

    // `exec`: the answer, and the artifact in the cache once the command has ended.
    let cache = temp_dir("tiers-exec-cache");
    let mut exec = crate::binary::sandgate()
        .args(["exec", "-"])
        .env("SANDGATE_CACHE_DIR", &cache)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    exec.stdin.take().unwrap().write_all(b"return 6 * 7").unwrap();
    let output = exec.wait_with_output().unwrap();
    assert!(output.status.success(), "{output:?}");
    let body: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(body["result"], 42, "{body}");
    assert_eq!(artifacts(&cache), 1, "the JavaScript guest's optimised code");

    // `serve`: answers on Winch's code, and a graceful stop leaves the artifact.
    let cache = temp_dir("tiers-serve-cache");
    let mut command = crate::binary::sandgate();
    command.args(["serve", "--listen", "127.0.0.1:0"]).env("SANDGATE_CACHE_DIR", &cache);
    let (child, base) = crate::binary::start(command);
    let mut server = crate::binary::Running { child, base };
    let (status, answer) = crate::harness::post_to(&server.base, json!({"code": "6 * 7", "language": "python"})).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["result"], 42, "{answer}");
    server.stop();
    assert_eq!(artifacts(&cache), 2, "both guests' optimised code, finished before the server ended");
}
