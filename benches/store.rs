//! `cargo bench --bench store`: the embedded SQLite store next to PostgreSQL, in one
//! run, on the same machine:
//! - trivial executions per second over HTTP (closed loop, 64 connections), each
//!   recorded in the ledger before it is answered;
//! - the latency the model proxy adds at 1,000 requests/s when every call is reserved
//!   against a budget and released by the ledger;
//! - PostgreSQL round trips per execution and per model call
//!   (`sandgate_store_round_trips_total`).
//!
//! PostgreSQL is Debian's, started in a temporary directory with its shipped
//! durability (fsync and synchronous commit on); the server is in this process, as in
//! the other benchmarks.

#[allow(dead_code)]
#[path = "../tests/all/harness.rs"]
mod harness;

#[allow(dead_code)]
#[path = "../tests/all/postgres.rs"]
mod postgres;

#[allow(dead_code)]
#[path = "../tests/all/stub.rs"]
mod stub;

#[allow(dead_code)]
#[path = "common/load.rs"]
mod load;

use std::time::{Duration, Instant};

use serde_json::json;

const RATE: u64 = 1000;
const SECONDS: u64 = 8;
const CONNECTIONS: usize = 64;

const POLICY: &str = r#"
[[policy]]
name = "bench"
principals = ["*"]
[policy.limits]
[policy.models]
tiers = ["economy"]
[policy.budget]
scope = "team"
usd_per_day = 1_000_000
"#;

/// Closed-loop executions for `seconds`: answered per second, and how many were not 200.
async fn executions(base: &str, seconds: u64) -> (f64, usize) {
    sandgate::install_crypto_provider();
    let client = reqwest::Client::builder().pool_max_idle_per_host(1024).build().unwrap();
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let workers: Vec<_> = (0..CONNECTIONS)
        .map(|_| {
            let (client, url) = (client.clone(), format!("{base}/v1/execute"));
            tokio::spawn(async move {
                let (mut ok, mut failed) = (0u64, 0usize);
                while Instant::now() < deadline {
                    let response = client.post(&url).json(&json!({"code": "return 1 + 1"})).send().await;
                    let answered = match response {
                        Ok(r) if r.status() == 200 => r.bytes().await.is_ok(),
                        _ => false,
                    };
                    if answered {
                        ok += 1;
                    } else {
                        failed += 1;
                    }
                }
                (ok, failed)
            })
        })
        .collect();
    let (mut ok, mut failed) = (0, 0);
    for worker in workers {
        let (o, f) = worker.await.unwrap();
        ok += o;
        failed += f;
    }
    (ok as f64 / seconds as f64, failed)
}

/// PostgreSQL round trips so far, per operation, from the server's metrics.
async fn round_trips(base: &str) -> std::collections::BTreeMap<String, f64> {
    let text = reqwest::get(format!("{base}/metrics")).await.unwrap().text().await.unwrap();
    text.lines()
        .filter_map(|line| line.strip_prefix("sandgate_store_round_trips_total{op=\""))
        .filter_map(|rest| {
            let (op, value) = rest.split_once("\"} ")?;
            Some((op.to_string(), value.trim().parse::<f64>().ok()?))
        })
        .collect()
}

/// Round trips per operation between two readings, divided by `per`.
fn per_op(
    before: &std::collections::BTreeMap<String, f64>,
    after: &std::collections::BTreeMap<String, f64>,
    per: f64,
) -> String {
    let parts: Vec<String> = after
        .iter()
        .map(|(op, n)| (op, (n - before.get(op).copied().unwrap_or(0.0)) / per.max(1.0)))
        .filter(|(_, n)| *n > 0.0)
        .map(|(op, n)| format!("{op} {n:.2}"))
        .collect();
    let total: f64 = after.iter().map(|(op, n)| n - before.get(op).copied().unwrap_or(0.0)).sum::<f64>() / per.max(1.0);
    format!("{total:.2} ({})", parts.join(", "))
}

/// Executions and model calls recorded so far.
async fn recorded(base: &str) -> (f64, f64) {
    let report: serde_json::Value = reqwest::get(format!("{base}/v1/usage")).await.unwrap().json().await.unwrap();
    let totals = &report["totals"];
    (totals["executions"].as_f64().unwrap(), totals["model_calls"].as_f64().unwrap())
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let stub = stub::Stub::start();
    std::env::set_var("SANDGATE_BENCH_STUB_KEY", "sk-bench");
    let models = format!(
        "[providers.stub]\nkind = \"openai\"\nbase_url = \"{}/v1\"\napi_key_env = \"SANDGATE_BENCH_STUB_KEY\"\n\
         max_concurrency = 4096\n[models.bench]\nprovider = \"stub\"\nupstream = \"gpt-bench-ok\"\ntier = \"economy\"\n\
         input_per_mtok = 0.15\noutput_per_mtok = 0.6\n[tiers.economy]\nmodels = [\"bench\"]\n",
        stub.base
    );
    let cluster = postgres::Cluster::durable();
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    let direct_url = format!("{}/v1/chat/completions", stub.base);
    for backend in ["SQLite", "PostgreSQL"] {
        let config = match backend {
            "SQLite" => models.clone(),
            _ => format!("{models}[store]\nurl = \"{}\"\npool = 32\n", cluster.url("postgres")),
        };
        let server = harness::start_server_with(&config, POLICY);
        let base = server.base.clone();
        runtime.block_on(async {
            executions(&base, 1).await;
            let (trips, (runs, _)) = (round_trips(&base).await, recorded(&base).await);
            let (per_second, failed) = executions(&base, 5).await;
            let (trips_after, (runs_after, _)) = (round_trips(&base).await, recorded(&base).await);
            let per_execution = per_op(&trips, &trips_after, runs_after - runs);
            println!(
                "{backend}: {per_second:.0} trivial executions/s over HTTP ({CONNECTIONS} connections, {failed} not 200)"
            );

            let url = format!("{base}/v1/chat/completions");
            load::fixed_rate(&direct_url, "gpt-bench-ok", false, Some("sk-bench"), 500, 1).await;
            load::fixed_rate(&url, "bench", false, None, 500, 1).await;
            let direct = load::fixed_rate(&direct_url, "gpt-bench-ok", false, Some("sk-bench"), RATE, SECONDS).await;
            // Calls are recorded just after they are answered: let the last ones land.
            let (trips, (_, calls)) = (round_trips(&base).await, recorded(&base).await);
            let proxied = load::fixed_rate(&url, "bench", false, None, RATE, SECONDS).await;
            tokio::time::sleep(Duration::from_millis(500)).await;
            let (trips_after, (_, calls_after)) = (round_trips(&base).await, recorded(&base).await);
            load::report(&format!("{backend}: model proxy with a budget at {RATE}/s"), &direct, &proxied);
            if backend == "PostgreSQL" {
                let per_call = per_op(&trips, &trips_after, calls_after - calls);
                println!("PostgreSQL round trips per execution: {per_execution}");
                println!("PostgreSQL round trips per model call: {per_call}");
            }
        });
    }
}
