//! `cargo bench --bench approvals`: the time from a person's approval to the resumed
//! code's next instruction, on one replica. The real binary (release) serves on
//! SQLite. Each round, code makes a call a rule sends for approval, so
//! `POST /v1/execute` answers 202 (the execution is paused, its memory in the store);
//! then a lead's `POST /v1/approvals/{id}` is sent, and the code's first instruction
//! after the approved call returns `Date.now()`. The figure is that time minus the
//! moment the approval was sent (milliseconds, both on this machine's clock): the
//! decision, the store's claim, the paused memory made into a fresh instance, the
//! approved call, and the guest's `resume`. QuickJS's `Date.now()` counts whole
//! milliseconds, so that figure reads up to 1 ms low; the time until the result can
//! be read (`GET /v1/executions/{id}`, polled every millisecond) is an upper bound.
//! Rounds: `SANDGATE_BENCH_APPROVALS` (default 200).

#[path = "common/serve.rs"]
mod serve;

use std::process::Child;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};

const POLICY: &str = r#"
[[policy]]
name = "bench"
principals = ["*"]
[policy.limits]
[policy.tools]
allow = ["test.*"]
[[policy.rules]]
tools = ["test.echo"]
when = "has(args.base) && args.base == 'main'"
decision = "approve"
approvers = ["team:leads"]
"#;

const CODE: &str = r#"
const before = await tools.test.echo({base: 'dev'});
const merged = await tools.test.echo({base: input.base});
return Date.now();"#;

fn start(dir: &std::path::Path, keys: &str) -> (Child, String) {
    let config =
        format!("policies = \"policies\"\n[sandbox]\ntest_capability = true\n[ledger]\npath = \"ledger.db\"\n{keys}");
    serve::serve(dir, POLICY, &config)
}

fn key(name: &str, user: &str, team: &str) -> (String, String) {
    let token = sandgate::auth::generate_key();
    let entry = format!(
        "[[keys]]\nname = \"{name}\"\nuser = \"{user}\"\nteam = \"{team}\"\nrole = \"member\"\nhash = \"{}\"\n",
        sandgate::auth::hash_key(&token)
    );
    (token, entry)
}

fn now_ms() -> f64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs_f64() * 1e3
}

fn percentile(samples: &mut [f64], p: f64) -> f64 {
    samples.sort_by(f64::total_cmp);
    samples[((samples.len() - 1) as f64 * p) as usize]
}

fn main() {
    let rounds: usize = std::env::var("SANDGATE_BENCH_APPROVALS").ok().and_then(|n| n.parse().ok()).unwrap_or(200);
    let dir = std::env::temp_dir().join(format!("sandgate-approvals-bench-{}", std::process::id()));
    let (dev, dev_entry) = key("dev", "dana", "platform");
    let (lead, lead_entry) = key("lead", "lee", "leads");
    let (mut child, base) = start(&dir, &format!("{dev_entry}{lead_entry}"));
    sandgate::install_crypto_provider();
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    runtime.block_on(async {
        let client = reqwest::Client::new();
        let post = |url: String, key: &str, body: Value| {
            let request = client.post(url).bearer_auth(key).json(&body);
            async move {
                let response = request.send().await.expect("the server answers");
                let status = response.status();
                (status, response.json::<Value>().await.expect("a JSON body"))
            }
        };
        // Warm up: the guest compiled, the store's tables touched.
        for _ in 0..20 {
            let (status, body) =
                post(format!("{base}/v1/execute"), &dev, json!({"code": CODE, "input": {"base": "dev"}})).await;
            assert_eq!(status, 200, "{body}");
        }
        let mut latencies = Vec::with_capacity(rounds);
        let mut readable = Vec::with_capacity(rounds);
        for round in 0..rounds + 5 {
            let (status, paused) =
                post(format!("{base}/v1/execute"), &dev, json!({"code": CODE, "input": {"base": "main"}})).await;
            assert_eq!(status, 202, "{paused}");
            let id = paused["execution_id"].as_str().unwrap().to_string();
            let approval = paused["approvals"][0]["id"].as_str().unwrap().to_string();
            let sent = now_ms();
            let (status, decided) =
                post(format!("{base}/v1/approvals/{approval}"), &lead, json!({"decision": "approve"})).await;
            assert_eq!(status, 200, "{decided}");
            let next = loop {
                let view: Value = client
                    .get(format!("{base}/v1/executions/{id}"))
                    .bearer_auth(&dev)
                    .send()
                    .await
                    .unwrap()
                    .json()
                    .await
                    .unwrap();
                if view["status"] == "succeeded" {
                    break (view["result"]["result"].as_f64().expect("a time"), now_ms());
                }
                assert!(view["status"] == "paused" || view["status"] == "running", "{view}");
                tokio::time::sleep(Duration::from_millis(1)).await;
            };
            if round >= 5 {
                latencies.push(next.0 - sent);
                readable.push(next.1 - sent);
            }
        }
        println!(
            "approval to the resumed code's next instruction, {rounds} rounds: p50 {:.1} ms, p90 {:.1} ms, p99 {:.1} ms",
            percentile(&mut latencies, 0.5),
            percentile(&mut latencies, 0.9),
            percentile(&mut latencies, 0.99)
        );
        println!(
            "approval to the result readable over HTTP (an upper bound): p50 {:.1} ms, p90 {:.1} ms, p99 {:.1} ms",
            percentile(&mut readable, 0.5),
            percentile(&mut readable, 0.9),
            percentile(&mut readable, 0.99)
        );
    });
    let _ = child.kill();
    let _ = child.wait();
    let _ = std::fs::remove_dir_all(&dir);
}
