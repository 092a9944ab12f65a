//! `cargo bench --bench proxy`: how long counting a request's tokens takes at worst;
//! latency sandgate's model proxy adds at a fixed request
//! rate (non-streaming and streaming) for chat completions, for the Responses API
//! passed through to a Responses provider and translated to a chat completions one,
//! its maximum proxied throughput, and — when the
//! LiteLLM proxy is installed (`pip install 'litellm[proxy]'`) — LiteLLM on the same
//! stub at a rate it can sustain.
//!
//! `SANDGATE_BENCH_PROFILE=SECONDS` runs only the translated Responses case, non-streaming,
//! for that long (to profile with `perf record -g`), and prints its figures.
//!
//! The upstream is the Rust provider stub the tests use (real OpenAI wire format), so
//! the stub is not the bottleneck. Load is open-loop: requests start on a fixed
//! schedule whether or not earlier ones have finished, so queueing shows in the tail.

#[allow(dead_code)]
#[path = "../tests/all/stub.rs"]
mod stub;

#[allow(dead_code)]
#[path = "common/load.rs"]
mod load;

use std::time::Duration;

use load::{fixed_rate, max_throughput, report};

const RATE: u64 = 1000;
const SECONDS: u64 = 8;

fn start_sandgate(stub_base: &str) -> String {
    let dir = std::env::temp_dir().join(format!("sandgate-proxy-bench-{}", std::process::id()));
    std::fs::create_dir_all(dir.join("policies")).unwrap();
    std::fs::write(
        dir.join("policies/bench.toml"),
        "[[policy]]\nname = \"bench\"\nprincipals = [\"*\"]\n[policy.limits]\n[policy.models]\ntiers = [\"economy\"]\n",
    )
    .unwrap();
    let config = format!(
        "policies = \"{}\"\n[ledger]\npath = \"{}\"\n[providers.stub]\nkind = \"openai\"\nbase_url = \"{stub_base}/v1\"\napi_key_env = \"SANDGATE_BENCH_STUB_KEY\"\nmax_concurrency = 4096\n[models.bench]\nprovider = \"stub\"\nupstream = \"gpt-bench-ok\"\ntier = \"economy\"\ninput_per_mtok = 0.15\noutput_per_mtok = 0.6\n[providers.stub-responses]\nkind = \"openai-responses\"\nbase_url = \"{stub_base}/v1\"\napi_key_env = \"SANDGATE_BENCH_STUB_KEY\"\nmax_concurrency = 4096\n[models.bench-responses]\nprovider = \"stub-responses\"\nupstream = \"resp-bench-ok\"\ntier = \"economy\"\ninput_per_mtok = 0.15\noutput_per_mtok = 0.6\n[tiers.economy]\n",
        dir.join("policies").display(),
        dir.join("ledger.db").display()
    );
    let path = dir.join("sandgate.toml");
    std::fs::write(&path, config).unwrap();
    std::env::set_var("SANDGATE_BENCH_STUB_KEY", "sk-bench");
    let config = sandgate::config::Config::load(&path).unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
        runtime.block_on(async move {
            let server = sandgate::Server::new(config).await.unwrap();
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            tx.send(listener.local_addr().unwrap()).unwrap();
            server.serve(listener, std::future::pending()).await.unwrap();
        });
    });
    format!("http://{}", rx.recv().unwrap())
}

/// Starts LiteLLM on the stub if it is installed; returns its base URL and process.
fn start_litellm(stub_base: &str) -> Option<(String, std::process::Child)> {
    let installed = std::process::Command::new("python3").args(["-c", "import litellm.proxy"]).output().ok()?;
    if !installed.status.success() {
        println!("LiteLLM: not installed (pip install 'litellm[proxy]'); no comparison run");
        return None;
    }
    let dir = std::env::temp_dir().join(format!("sandgate-litellm-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).ok()?;
    let config = dir.join("litellm.yaml");
    std::fs::write(
        &config,
        format!(
            "model_list:\n  - model_name: bench\n    litellm_params:\n      model: openai/gpt-bench-ok\n      api_base: {stub_base}/v1\n      api_key: sk-bench\n"
        ),
    )
    .ok()?;
    let port = 18000 + (std::process::id() % 1000) as u16;
    let child = std::process::Command::new("litellm")
        .args(["--config", config.to_str()?, "--port", &port.to_string(), "--num_workers", "1"])
        .env("LITELLM_MASTER_KEY", "sk-litellm-bench")
        .env("LITELLM_LOCAL_MODEL_COST_MAP", "True")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .ok()?;
    let base = format!("http://127.0.0.1:{port}");
    for _ in 0..120 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return Some((base, child));
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    println!("LiteLLM: did not start within 60 s");
    None
}

/// How long the budget's token count takes on the inputs that cost it most: one long
/// run of letters (the tokenizer's merging is quadratic in a piece's length) and
/// large requests. Each is the median of five counts.
fn token_counting_worst_cases() {
    let prose = "The quick brown fox jumps over the lazy dog, again and again. ".repeat(1 << 14);
    let cases: [(&str, String); 4] = [
        ("100 KB single word", "a".repeat(100_000)),
        ("1 MB single word", "a".repeat(1 << 20)),
        ("1 MB prose", prose.clone()),
        ("8 MB single word", "a".repeat(8 << 20)),
    ];
    for (label, text) in cases {
        let mut times: Vec<Duration> = (0..5)
            .map(|_| {
                let started = std::time::Instant::now();
                std::hint::black_box(sandgate::model::count_tokens(&text));
                started.elapsed()
            })
            .collect();
        times.sort();
        println!("token count, {label}: {:.1} ms", times[2].as_secs_f64() * 1e3);
    }
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let profiling = std::env::var("SANDGATE_BENCH_PROFILE").ok().and_then(|s| s.parse::<u64>().ok());
    if profiling.is_none() {
        token_counting_worst_cases();
    }
    let stub = stub::Stub::start();
    let sandgate = start_sandgate(&stub.base);
    let direct_url = format!("{}/v1/chat/completions", stub.base);
    let proxied_url = format!("{sandgate}/v1/chat/completions");
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    if let Some(seconds) = profiling {
        runtime.block_on(async {
            let responses = format!("{sandgate}/v1/responses");
            fixed_rate(&responses, "bench", false, None, 500, 1).await;
            let direct = fixed_rate(&direct_url, "gpt-bench-ok", false, Some("sk-bench"), RATE, seconds).await;
            let proxied = fixed_rate(&responses, "bench", false, None, RATE, seconds).await;
            report(&format!("Responses translated to chat completions, non-streaming at {RATE}/s"), &direct, &proxied);
        });
        return;
    }
    runtime.block_on(async {
        // Warm both paths.
        fixed_rate(&direct_url, "gpt-bench-ok", false, Some("sk-bench"), 500, 1).await;
        fixed_rate(&proxied_url, "bench", false, None, 500, 1).await;

        let direct = fixed_rate(&direct_url, "gpt-bench-ok", false, Some("sk-bench"), RATE, SECONDS).await;
        let proxied = fixed_rate(&proxied_url, "bench", false, None, RATE, SECONDS).await;
        report(&format!("non-streaming at {RATE}/s"), &direct, &proxied);

        let direct = fixed_rate(&direct_url, "gpt-bench-ok", true, Some("sk-bench"), RATE, SECONDS).await;
        let proxied = fixed_rate(&proxied_url, "bench", true, None, RATE, SECONDS).await;
        report(&format!("streaming at {RATE}/s"), &direct, &proxied);

        // The Responses API: passed through to a provider that speaks it, and translated
        // for one that speaks chat completions (against that provider's own route).
        let responses_direct = format!("{}/v1/responses", stub.base);
        let responses_proxied = format!("{sandgate}/v1/responses");
        fixed_rate(&responses_proxied, "bench-responses", false, None, 500, 1).await;
        fixed_rate(&responses_proxied, "bench", false, None, 500, 1).await;
        for stream in [false, true] {
            let what = if stream { "streaming" } else { "non-streaming" };
            let direct = fixed_rate(&responses_direct, "resp-bench-ok", stream, Some("sk-bench"), RATE, SECONDS).await;
            let proxied = fixed_rate(&responses_proxied, "bench-responses", stream, None, RATE, SECONDS).await;
            report(&format!("Responses passed through, {what} at {RATE}/s"), &direct, &proxied);
            let direct = fixed_rate(&direct_url, "gpt-bench-ok", stream, Some("sk-bench"), RATE, SECONDS).await;
            let proxied = fixed_rate(&responses_proxied, "bench", stream, None, RATE, SECONDS).await;
            report(&format!("Responses translated to chat completions, {what} at {RATE}/s"), &direct, &proxied);
        }

        let rps = max_throughput(&proxied_url, "bench", 64, 5).await;
        println!("maximum proxied throughput: {rps:.0} requests/s (64 connections, non-streaming)");
    });

    if let Some((base, mut child)) = start_litellm(&stub.base) {
        let url = format!("{base}/v1/chat/completions");
        runtime.block_on(async {
            let rate = 100;
            fixed_rate(&url, "bench", false, Some("sk-litellm-bench"), 50, 2).await;
            let direct = fixed_rate(&direct_url, "gpt-bench-ok", false, Some("sk-bench"), rate, SECONDS).await;
            let litellm = fixed_rate(&url, "bench", false, Some("sk-litellm-bench"), rate, SECONDS).await;
            let proxied = fixed_rate(&proxied_url, "bench", false, None, rate, SECONDS).await;
            report(&format!("LiteLLM non-streaming at {rate}/s"), &direct, &litellm);
            report(&format!("sandgate non-streaming at {rate}/s"), &direct, &proxied);
        });
        let _ = child.kill();
    }
}
