//! `cargo bench --bench proxy`: latency sandgate's model proxy adds at a fixed request
//! rate (non-streaming and streaming), its maximum proxied throughput, and — when the
//! LiteLLM proxy is installed (`pip install 'litellm[proxy]'`) — LiteLLM on the same
//! stub at a rate it can sustain.
//!
//! The upstream is the Rust provider stub the tests use (real OpenAI wire format), so
//! the stub is not the bottleneck. Load is open-loop: requests start on a fixed
//! schedule whether or not earlier ones have finished, so queueing shows in the tail.

#[allow(dead_code)]
#[path = "../tests/all/stub.rs"]
mod stub;

use std::time::{Duration, Instant};

use serde_json::json;

const RATE: u64 = 1000;
const SECONDS: u64 = 8;

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 * p) as usize).min(sorted.len() - 1)]
}

async fn one(client: &reqwest::Client, url: &str, model: &str, stream: bool, key: Option<&str>) -> Option<Duration> {
    let started = Instant::now();
    let mut request = client.post(url).json(&json!({
        "model": model, "stream": stream,
        "messages": [{"role": "user", "content": "benchmark the proxy please"}],
    }));
    if let Some(key) = key {
        request = request.bearer_auth(key);
    }
    let response = request.send().await.ok()?;
    if !response.status().is_success() {
        return None;
    }
    response.bytes().await.ok()?;
    Some(started.elapsed())
}

/// Open-loop load at `rate` per second for `seconds`; returns sorted latencies and
/// the number of failures.
async fn fixed_rate(
    url: &str,
    model: &str,
    stream: bool,
    key: Option<&str>,
    rate: u64,
    seconds: u64,
) -> (Vec<Duration>, usize) {
    sandgate::install_crypto_provider();
    let client = reqwest::Client::builder().pool_max_idle_per_host(1024).build().unwrap();
    let mut tick = tokio::time::interval(Duration::from_micros(1_000_000 / rate));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut tasks = Vec::with_capacity((rate * seconds) as usize);
    for _ in 0..rate * seconds {
        tick.tick().await;
        let (client, url, model, key) = (client.clone(), url.to_string(), model.to_string(), key.map(str::to_string));
        tasks.push(tokio::spawn(async move { one(&client, &url, &model, stream, key.as_deref()).await }));
    }
    let mut latencies = Vec::new();
    let mut failures = 0;
    for task in tasks {
        match task.await.ok().flatten() {
            Some(latency) => latencies.push(latency),
            None => failures += 1,
        }
    }
    latencies.sort();
    (latencies, failures)
}

/// Closed-loop: `workers` clients back to back for `seconds`; requests per second.
async fn max_throughput(url: &str, model: &str, workers: usize, seconds: u64) -> f64 {
    sandgate::install_crypto_provider();
    let client = reqwest::Client::builder().pool_max_idle_per_host(1024).build().unwrap();
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let tasks: Vec<_> = (0..workers)
        .map(|_| {
            let (client, url, model) = (client.clone(), url.to_string(), model.to_string());
            tokio::spawn(async move {
                let mut done = 0u64;
                while Instant::now() < deadline {
                    if one(&client, &url, &model, false, None).await.is_some() {
                        done += 1;
                    }
                }
                done
            })
        })
        .collect();
    let mut total = 0;
    for task in tasks {
        total += task.await.unwrap_or(0);
    }
    total as f64 / seconds as f64
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn report(label: &str, direct: &(Vec<Duration>, usize), proxied: &(Vec<Duration>, usize)) {
    let (d50, d99) = (percentile(&direct.0, 0.5), percentile(&direct.0, 0.99));
    let (p50, p99) = (percentile(&proxied.0, 0.5), percentile(&proxied.0, 0.99));
    println!(
        "{label}: direct p50 {:.2} ms p99 {:.2} ms; proxied p50 {:.2} ms p99 {:.2} ms; added p50 {:.2} ms p99 {:.2} ms ({} + {} failures)",
        ms(d50),
        ms(d99),
        ms(p50),
        ms(p99),
        ms(p50.saturating_sub(d50)),
        ms(p99.saturating_sub(d99)),
        direct.1,
        proxied.1
    );
}

fn start_sandgate(stub_base: &str) -> String {
    let dir = std::env::temp_dir().join(format!("sandgate-proxy-bench-{}", std::process::id()));
    std::fs::create_dir_all(dir.join("policies")).unwrap();
    std::fs::write(
        dir.join("policies/bench.toml"),
        "[[policy]]\nname = \"bench\"\nprincipals = [\"*\"]\n[policy.limits]\n[policy.models]\ntiers = [\"economy\"]\n",
    )
    .unwrap();
    let config = format!(
        "policies = \"{}\"\n[ledger]\npath = \"{}\"\n[providers.stub]\nkind = \"openai\"\nbase_url = \"{stub_base}/v1\"\napi_key_env = \"SANDGATE_BENCH_STUB_KEY\"\nmax_concurrency = 4096\n[models.bench]\nprovider = \"stub\"\nupstream = \"gpt-bench-ok\"\ntier = \"economy\"\ninput_per_mtok = 0.15\noutput_per_mtok = 0.6\n[tiers.economy]\n",
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

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let stub = stub::Stub::start();
    let sandgate = start_sandgate(&stub.base);
    let direct_url = format!("{}/v1/chat/completions", stub.base);
    let proxied_url = format!("{sandgate}/v1/chat/completions");
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
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
