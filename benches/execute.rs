//! `cargo bench --bench execute`: in-process latency of a trivial execution, a
//! CPU-bound script against native QuickJS, memory per execution parked on a host
//! call, the same three for Python (against native CPython and native Monty), and
//! process start to first execution (cold and warm compile cache), and a server's
//! first executions on an empty compile cache.
//!
//! Prints one line per figure; the README quotes them. `SANDGATE_BENCH_TRIVIAL_ONLY=1`
//! stops after the trivial execution, `SANDGATE_BENCH_CPU_ONLY=1` runs the CPU-bound
//! script alone, `SANDGATE_BENCH_START_ONLY=1` the first executions alone.

#[path = "common/serve.rs"]
mod serve;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use sandgate::auth::Principal;
use sandgate::limits::Limits;
use sandgate::request::Language;
use sandgate::sandbox::{
    Call, Compiler, Door, Doors, ExecError, Job, MemoryFile, Outcome, Sandbox, SandboxConfig, Started,
};

/// A `tools` door with the test server alone, for executions parked on a call.
struct TestTools;

impl Door for TestTools {
    fn call(&self, call: Call) -> Result<Started, ExecError> {
        let tool = call.method.strip_prefix("test.").unwrap_or(&call.method).to_string();
        Ok(sandgate::mcp::door::test_tool(tool, call.args, Arc::new(Principal::local()), call.execution_id).into())
    }
}

const CPU_SCRIPT: &str = r#"
function fib(n) { return n < 2 ? n : fib(n - 1) + fib(n - 2); }
let text = "";
for (let i = 0; i < 20000; i++) text += String.fromCharCode(97 + (i * 7) % 26);
const words = text.match(/.{1,7}/g).sort();
const counts = {};
for (const w of words) counts[w[0]] = (counts[w[0]] || 0) + 1;
const primes = [];
for (let n = 2; primes.length < 3000; n++) { if (primes.every(p => p * p > n || n % p)) primes.push(n); }
return fib(24) + words.length + Object.keys(counts).length + primes[primes.length - 1];
"#;

/// The same work as [`CPU_SCRIPT`], in Python.
const PYTHON_CPU_SCRIPT: &str = r#"
def fib(n):
    return n if n < 2 else fib(n - 1) + fib(n - 2)
text = "".join([chr(97 + (i * 7) % 26) for i in range(20000)])
words = sorted([text[i:i + 7] for i in range(0, len(text), 7)])
counts = {}
for w in words:
    counts[w[0]] = counts.get(w[0], 0) + 1
primes = []
n = 2
while len(primes) < 3000:
    if all([p * p > n or n % p for p in primes]):
        primes.append(n)
    n += 1
fib(24) + len(words) + len(counts) + primes[-1]
"#;

/// [`PYTHON_CPU_SCRIPT`] under native CPython (`python3`), timed inside the process.
fn native_cpython(code: &str) -> Option<Duration> {
    let script = format!("import time\n_t = time.perf_counter()\n{code}\nprint(time.perf_counter() - _t)\n");
    let output = std::process::Command::new("python3").args(["-c", &script]).output().ok()?;
    let seconds: f64 = String::from_utf8_lossy(&output.stdout).trim().parse().ok()?;
    Some(Duration::from_secs_f64(seconds))
}

/// [`PYTHON_CPU_SCRIPT`] under native Monty, in this process.
fn native_monty(code: &str) -> Duration {
    use monty_types::{CompileOptions, PrintWriter, ResourceTracker};
    let started = Instant::now();
    let runner = monty::MontyRun::new(code.to_string(), "main.py", Vec::new(), CompileOptions::default()).unwrap();
    runner.run(Vec::new(), ResourceTracker::default(), PrintWriter::Disabled).unwrap();
    started.elapsed()
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 * p) as usize).min(sorted.len() - 1)]
}

/// Executions in a session: the image sizes of a trivial session and of one holding
/// about 10 MB of live objects, and what an execution in the latter adds over a fresh
/// one (restoring its image before, capturing it after).
async fn sessions(sandbox: &Sandbox, limits: Limits) {
    // As the service runs a session: its memory in a file the execution maps, and
    // the pages an execution wrote written into the file after it.
    let in_session = |code: &str, memory: &Arc<MemoryFile>| Job { session: Some(memory.clone()), ..job(code, limits) };
    let open = || async { Arc::new(sandbox.session_memory(Language::Javascript, 0, []).await.unwrap()) };
    let mut kept: BTreeMap<u32, usize> = BTreeMap::new();
    let keep = |memory: &MemoryFile, outcome: Outcome, kept: &mut BTreeMap<u32, usize>| {
        assert!(outcome.ok, "{:?}", outcome.error);
        let written = outcome.session_image.expect("a session's written pages");
        memory.apply(&written).unwrap();
        for (page, bytes) in written.chunks() {
            kept.insert(page, bytes.len());
        }
        written.len()
    };
    let trivial = open().await;
    let mut trivial_kept = BTreeMap::new();
    keep(&trivial, sandbox.execute(in_session("let x = 1", &trivial), None).await.unwrap(), &mut trivial_kept);
    let memory = open().await;
    let big = "globalThis.rows = Array.from({ length: 100000 }, (_, i) => ({ id: i, name: 'row ' + i, tags: ['a', 'b'] })); rows.length";
    keep(&memory, sandbox.execute(in_session(big, &memory), None).await.unwrap(), &mut kept);
    let state = |kept: &BTreeMap<u32, usize>| kept.values().sum::<usize>();
    println!(
        "session state: {} KiB for `let x = 1`, {:.1} MiB holding 100,000 objects (memory {:.1} MiB); \
         their memory files hold {} KiB and {:.1} MiB, in {} and {} runs",
        state(&trivial_kept) / 1024,
        state(&kept) as f64 / (1 << 20) as f64,
        memory.size() as f64 / (1 << 20) as f64,
        trivial.held_bytes() / 1024,
        memory.held_bytes() as f64 / (1 << 20) as f64,
        trivial.runs(),
        memory.runs()
    );
    let (mut fresh, mut session, mut written) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..200 {
        let started = Instant::now();
        assert!(sandbox.execute(job("1 + 1", limits), None).await.unwrap().ok);
        fresh.push(started.elapsed());
        let started = Instant::now();
        let outcome = sandbox.execute(in_session("rows.length", &memory), None).await.unwrap();
        written.push(keep(&memory, outcome, &mut kept));
        session.push(started.elapsed());
    }
    fresh.sort();
    session.sort();
    written.sort();
    let (f, s) = (percentile(&fresh, 0.5), percentile(&session, 0.5));
    println!(
        "execution in a session holding 100,000 objects: p50 {:.3} ms, fresh p50 {:.3} ms, added {:.3} ms (p99 {:.3} ms); {} pages written (p50)",
        s.as_secs_f64() * 1e3,
        f.as_secs_f64() * 1e3,
        s.saturating_sub(f).as_secs_f64() * 1e3,
        percentile(&session, 0.99).as_secs_f64() * 1e3,
        written[written.len() / 2]
    );
    // Making the memory again from its pages: a session's first execution on a
    // replica (or after a restart), before the store read.
    let pages: Vec<(u32, Vec<u8>)> = kept.keys().map(|&page| (page, vec![1u8; 4096])).collect();
    let mut made = Vec::new();
    for _ in 0..20 {
        let started = Instant::now();
        let file = sandbox
            .session_memory(Language::Javascript, memory.size(), pages.iter().map(|(p, b)| (*p, b.as_slice())))
            .await
            .unwrap();
        made.push(started.elapsed());
        drop(file);
    }
    made.sort();
    println!(
        "a session's memory made from its {} kept pages: p50 {:.2} ms",
        pages.len(),
        percentile(&made, 0.5).as_secs_f64() * 1e3
    );
}

fn job(code: &str, limits: Limits) -> Job {
    Job { doors: Doors::default().with("tools", Arc::new(TestTools)), ..Job::new(code, Language::Javascript, limits) }
}

/// p50 and p99 of `runs` executions of `make()`, each awaited before the next.
async fn latencies(sandbox: &Sandbox, runs: usize, make: impl Fn() -> Job) -> (Duration, Duration) {
    let mut times = Vec::with_capacity(runs);
    for _ in 0..runs {
        let started = Instant::now();
        let outcome = sandbox.execute(make(), None).await.unwrap();
        times.push(started.elapsed());
        assert!(outcome.ok, "{:?}", outcome.error);
    }
    times.sort();
    (percentile(&times, 0.50), percentile(&times, 0.99))
}

/// Set to `javascript` or `python`, the bench measures only the memory per parked
/// execution of that language, and prints it in bytes.
const PARKED_ONLY: &str = "SANDGATE_BENCH_PARKED_ONLY";

/// Resident bytes per parked execution of `language`, measured in a fresh process of
/// this bench. In this one, the pool's slots that earlier executions made resident
/// stay resident (that is what the pool is for), so a second measurement here would
/// find its slots already paid for and report nothing.
fn parked_in_fresh_process(language: &str) -> f64 {
    let output = std::process::Command::new(std::env::current_exe().expect("the bench's own path"))
        .env(PARKED_ONLY, language)
        .stderr(std::process::Stdio::inherit())
        .output()
        .expect("the bench runs again");
    assert!(output.status.success(), "the {language} parked-memory run failed");
    let text = String::from_utf8_lossy(&output.stdout);
    text.lines().last().and_then(|l| l.trim().parse().ok()).expect("a byte count")
}

/// Resident bytes per execution while `parked` of `make()` wait on a 3 s host call.
async fn parked_memory(sandbox: &Arc<Sandbox>, parked: usize, make: impl Fn() -> Job) -> f64 {
    let before = rss_bytes();
    let handles: Vec<_> = (0..parked)
        .map(|_| {
            let (sandbox, job) = (sandbox.clone(), make());
            tokio::spawn(async move { sandbox.execute(job, None).await.unwrap() })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let during = rss_bytes();
    for handle in handles {
        assert!(handle.await.unwrap().ok);
    }
    during.saturating_sub(before) as f64 / parked as f64
}

/// The Python guest's figures, measured the same way as JavaScript's above.
async fn python(sandbox: &Arc<Sandbox>, limits: Limits) {
    let python = |code: &str| Job { language: Language::Python, ..job(code, limits) };
    for _ in 0..5_000 {
        sandbox.execute(python("1 + 1"), None).await.unwrap();
    }
    let (p50, p99) = latencies(sandbox, 10_000, || python("1 + 1")).await;
    println!(
        "python: trivial execution in-process (\"1 + 1\"): p50 {:.1} µs, p99 {:.1} µs (10000 runs)",
        p50.as_secs_f64() * 1e6,
        p99.as_secs_f64() * 1e6
    );

    let (mut sandboxed, mut monty, mut cpython) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..5 {
        let started = Instant::now();
        let outcome = sandbox.execute(python(PYTHON_CPU_SCRIPT), None).await.unwrap();
        sandboxed.push(started.elapsed());
        assert!(outcome.ok, "{:?}", outcome.error);
        monty.push(native_monty(PYTHON_CPU_SCRIPT));
        cpython.extend(native_cpython(PYTHON_CPU_SCRIPT));
    }
    sandboxed.sort();
    monty.sort();
    cpython.sort();
    let (s, m) = (percentile(&sandboxed, 0.5), percentile(&monty, 0.5));
    let c = if cpython.is_empty() { None } else { Some(percentile(&cpython, 0.5)) };
    println!(
        "python: cpu-bound script: sandboxed {:.1} ms, native Monty {:.1} ms (ratio {:.2}x), native CPython {}",
        s.as_secs_f64() * 1e3,
        m.as_secs_f64() * 1e3,
        s.as_secs_f64() / m.as_secs_f64(),
        c.map_or("not installed".into(), |c| format!(
            "{:.1} ms (ratio {:.2}x)",
            c.as_secs_f64() * 1e3,
            s.as_secs_f64() / c.as_secs_f64()
        ))
    );

    let per = parked_in_fresh_process("python");
    println!("python: memory per parked execution: {:.0} KiB resident (500 parked at once)", per / 1024.0);
}

fn rss_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: u64 = statm.split_whitespace().nth(1).and_then(|p| p.parse().ok()).unwrap_or(0);
    pages * 4096
}

fn native_quickjs(code: &str) -> Duration {
    let runtime = rquickjs::Runtime::new().unwrap();
    let context = rquickjs::Context::full(&runtime).unwrap();
    let started = Instant::now();
    context.with(|ctx| {
        let value: i64 = ctx.eval(format!("(function(){{{code}}})()")).unwrap();
        assert!(value > 0);
    });
    started.elapsed()
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let cache = format!("{}/../bench-cache", env!("CARGO_MANIFEST_DIR"));
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    if std::env::var_os("SANDGATE_BENCH_START_ONLY").is_some() {
        starts(&runtime);
        return;
    }
    // Cranelift's code from the first execution on, even when the cache does not hold it.
    let config = SandboxConfig {
        cache_dir: Some(cache.into()),
        max_concurrent: 1024,
        compiler: Compiler::Optimizing,
        ..Default::default()
    };
    let sandbox = Arc::new(Sandbox::new(config).unwrap());
    let limits = Limits { fuel: u64::MAX / 4, wall_ms: 60_000, ..Limits::default() };

    if let Ok(language) = std::env::var(PARKED_ONLY) {
        // A fresh process: no pool slot has been touched yet, so what the parked
        // executions make resident is theirs alone.
        let python = language == "python";
        let make = |code: &str| {
            let job = job(code, limits);
            if python {
                Job { language: Language::Python, ..job }
            } else {
                job
            }
        };
        let (warm, parked) = if python {
            ("1 + 1", "await tools.test.sleep(ms=3000)\n1")
        } else {
            ("return 1 + 1", "await tools.test.sleep({ms: 3000}); return 1")
        };
        runtime.block_on(async {
            assert!(sandbox.execute(make(warm), None).await.unwrap().ok, "the guest loads");
            println!("{}", parked_memory(&sandbox, 500, || make(parked)).await);
        });
        return;
    }
    if std::env::var_os("SANDGATE_BENCH_PYTHON_ONLY").is_some() {
        runtime.block_on(python(&sandbox, limits));
        return;
    }
    if std::env::var_os("SANDGATE_BENCH_SESSIONS_ONLY").is_some() {
        runtime.block_on(sessions(&sandbox, limits));
        return;
    }
    runtime.block_on(async {
        let cpu_only = std::env::var_os("SANDGATE_BENCH_CPU_ONLY").is_some();
        // Trivial execution, in process, after a warm-up of the engine, pools and runtime.
        for _ in 0..if cpu_only { 0 } else { 20_000 } {
            sandbox.execute(job("return 1 + 1", limits), None).await.unwrap();
        }
        for code in if cpu_only { &[][..] } else { &["1 + 1", "return 1 + 1"][..] } {
            let (p50, p99) = latencies(&sandbox, 10_000, || job(code, limits)).await;
            println!(
                "trivial execution in-process ({code:?}): p50 {:.1} µs, p99 {:.1} µs (10000 runs)",
                p50.as_secs_f64() * 1e6,
                p99.as_secs_f64() * 1e6
            );
        }
        if std::env::var_os("SANDGATE_BENCH_TRIVIAL_ONLY").is_some() {
            return;
        }

        // CPU-bound script: sandbox (fuel and epochs on) against native QuickJS.
        let mut sandboxed = Vec::new();
        let mut native = Vec::new();
        for _ in 0..7 {
            let started = Instant::now();
            let outcome = sandbox.execute(job(CPU_SCRIPT, limits), None).await.unwrap();
            sandboxed.push(started.elapsed());
            assert!(outcome.ok, "{:?}", outcome.error);
            native.push(native_quickjs(CPU_SCRIPT));
        }
        sandboxed.sort();
        native.sort();
        let (s, n) = (percentile(&sandboxed, 0.5), percentile(&native, 0.5));
        println!(
            "cpu-bound script: sandboxed {:.1} ms, native QuickJS {:.1} ms, ratio {:.2}x",
            s.as_secs_f64() * 1e3,
            n.as_secs_f64() * 1e3,
            s.as_secs_f64() / n.as_secs_f64()
        );
        if cpu_only {
            return;
        }

        // Memory per execution parked on a host call.
        let per = parked_in_fresh_process("javascript");
        println!("memory per parked execution: {:.0} KiB resident (500 parked at once)", per / 1024.0);

        python(&sandbox, limits).await;
        sessions(&sandbox, limits).await;
    });

    if std::env::var_os("SANDGATE_BENCH_TRIVIAL_ONLY").is_some()
        || std::env::var_os("SANDGATE_BENCH_CPU_ONLY").is_some()
    {
        return;
    }
    starts(&runtime);
}

/// Process start to first execution, and a server's first executions.
fn starts(runtime: &tokio::runtime::Runtime) {
    // Process start to first execution: until its result is printed, and until the
    // process has ended (on an empty cache, after the optimised code is compiled and
    // cached; see the sandbox's `tiers`).
    let binary = env!("CARGO_BIN_EXE_sandgate");
    let cold_dir = std::env::temp_dir().join(format!("sandgate-bench-cold-{}", std::process::id()));
    let run_exec = |dir: &std::path::Path| {
        use std::io::{Read, Write};
        let started = Instant::now();
        let mut child = std::process::Command::new(binary)
            .args(["exec", "-"])
            .env("SANDGATE_CACHE_DIR", dir)
            .env("SANDGATE_LEDGER", dir.join("ledger.db"))
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(b"return 1").unwrap();
        let mut stdout = child.stdout.take().unwrap();
        let mut first = [0u8; 1];
        stdout.read_exact(&mut first).unwrap();
        let answered = started.elapsed();
        std::io::copy(&mut stdout, &mut std::io::sink()).unwrap();
        assert!(child.wait().unwrap().success());
        (answered, started.elapsed())
    };
    let (cold, cold_exit) = run_exec(&cold_dir);
    let mut warm: Vec<Duration> = (0..10).map(|_| run_exec(&cold_dir).0).collect();
    warm.sort();
    let _ = std::fs::remove_dir_all(&cold_dir);
    println!(
        "process start to first execution: cold cache {:.0} ms (the process ended at {:.0} ms, the optimised code \
         cached), warm cache {:.1} ms (median of 10)",
        cold.as_secs_f64() * 1e3,
        cold_exit.as_secs_f64() * 1e3,
        percentile(&warm, 0.5).as_secs_f64() * 1e3
    );
    runtime.block_on(first_executions_of_a_server());
}

/// A server started on an empty compile cache: how long after it was started it
/// answers its first execution, then how long its first Python execution and its first
/// execution in a session of each language take.
async fn first_executions_of_a_server() {
    let dir = std::env::temp_dir().join(format!("sandgate-bench-first-{}", std::process::id()));
    let policy = "[[policy]]\nname = \"bench\"\nprincipals = [\"*\"]\n[policy.limits]\n[policy.sessions]\nmax = 100\n";
    let config = format!(
        "policies = \"policies\"\n[ledger]\npath = \"ledger.db\"\n[sandbox]\ncache_dir = \"{}\"\n",
        dir.join("cache").display()
    );
    let started = Instant::now();
    let (mut child, base) = serve::serve(&dir, policy, &config);
    sandgate::install_crypto_provider();
    let client = reqwest::Client::new();
    let post = |path: &str, body: serde_json::Value| {
        let request = client.post(format!("{base}{path}")).json(&body).send();
        async move { request.await.unwrap().json::<serde_json::Value>().await.unwrap() }
    };
    let timed = |path: &'static str, body: serde_json::Value| {
        let post = &post;
        async move {
            let at = Instant::now();
            let answer = post(path, body).await;
            assert_eq!(answer["ok"], true, "{answer}");
            at.elapsed()
        }
    };
    timed("/v1/execute", serde_json::json!({"code": "return 1"})).await;
    let first = started.elapsed();
    let python = timed("/v1/execute", serde_json::json!({"code": "1", "language": "python"})).await;
    let mut sessions = Vec::new();
    for language in ["javascript", "python"] {
        let opened = post("/v1/sessions", serde_json::json!({"language": language})).await;
        let id = opened["session_id"].as_str().unwrap_or_else(|| panic!("{opened}")).to_string();
        sessions
            .push(timed("/v1/execute", serde_json::json!({"code": "1", "session_id": id, "language": language})).await);
    }
    let _ = child.kill();
    let _ = child.wait();
    let _ = std::fs::remove_dir_all(&dir);
    println!(
        "a server started on an empty cache: first execution answered {:.0} ms after the start; its first Python \
         execution {:.0} ms; its first execution in a session: JavaScript {:.0} ms, Python {:.0} ms",
        first.as_secs_f64() * 1e3,
        python.as_secs_f64() * 1e3,
        sessions[0].as_secs_f64() * 1e3,
        sessions[1].as_secs_f64() * 1e3
    );
}
