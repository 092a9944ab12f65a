//! Load helpers shared by the benchmarks: open-loop requests at a fixed rate,
//! closed-loop throughput, and latency reports.

use std::time::{Duration, Instant};

use serde_json::json;

pub fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 * p) as usize).min(sorted.len() - 1)]
}

pub async fn one(
    client: &reqwest::Client,
    url: &str,
    model: &str,
    stream: bool,
    key: Option<&str>,
) -> Option<Duration> {
    let started = Instant::now();
    // The Responses API takes `input`; chat completions, `messages`.
    let body = if url.ends_with("/responses") {
        json!({"model": model, "stream": stream, "store": false, "input": "benchmark the proxy please"})
    } else {
        json!({"model": model, "stream": stream, "messages": [{"role": "user", "content": "benchmark the proxy please"}]})
    };
    let mut request = client.post(url).json(&body);
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
pub async fn fixed_rate(
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
pub async fn max_throughput(url: &str, model: &str, workers: usize, seconds: u64) -> f64 {
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

pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

pub fn report(label: &str, direct: &(Vec<Duration>, usize), proxied: &(Vec<Duration>, usize)) {
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
