//! `cargo bench --bench sessions`: what idle sessions cost the server. The real
//! binary (release) serves on SQLite; this load script opens `SANDGATE_BENCH_SESSIONS`
//! sessions (default 10,000), runs one execution in each so each keeps state, and
//! reports the server's resident memory before and after, the state they keep in the
//! store, the session memories the server keeps between executions, and how long an
//! execution in an old session takes (its state read from the store), in the newest
//! one (its memory kept), and a fresh execution.
//!
//! `SANDGATE_BENCH_PROFILE=SECONDS` then runs executions in the newest session, one
//! after another, for that long (the server's pid is printed first, to profile it with
//! `perf record -g -p PID`), and prints their latency next to as many fresh ones.

#[path = "common/serve.rs"]
mod serve;

use std::process::Child;
use std::time::{Duration, Instant};

use futures::StreamExt;
use serde_json::{json, Value};

fn resident_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|kib| kib.parse().ok())
        .unwrap_or(0)
}

fn start(dir: &std::path::Path) -> (Child, String) {
    let policy = "[[policy]]\nname = \"bench\"\nprincipals = [\"*\"]\n[policy.limits]\n\
                  [policy.sessions]\nmax = 1000000\nmax_bytes = 1099511627776\nidle_ttl_s = 86400\n";
    serve::serve(dir, policy, "policies = \"policies\"\n[ledger]\npath = \"ledger.db\"\n")
}

fn percentile(samples: &mut [Duration], p: f64) -> f64 {
    samples.sort();
    samples[((samples.len() - 1) as f64 * p) as usize].as_secs_f64() * 1e3
}

async fn post(client: &reqwest::Client, url: String, body: Value) -> Value {
    let response = client.post(url).json(&body).send().await.expect("the server answers");
    response.json().await.expect("a JSON body")
}

fn main() {
    let count: usize = std::env::var("SANDGATE_BENCH_SESSIONS").ok().and_then(|n| n.parse().ok()).unwrap_or(10_000);
    let dir = std::env::temp_dir().join(format!("sandgate-sessions-bench-{}", std::process::id()));
    let (mut child, base) = start(&dir);
    let pid = child.id();
    sandgate::install_crypto_provider();
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    runtime.block_on(async {
        let client = reqwest::Client::new();
        let execute = |body: Value| post(&client, format!("{base}/v1/execute"), body);
        for _ in 0..50 {
            assert_eq!(execute(json!({"code": "return 1"})).await["ok"], true);
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
        let idle = resident_kib(pid);

        let started = Instant::now();
        let ids: Vec<String> = futures::stream::iter(0..count)
            .map(|i| {
                let client = client.clone();
                let base = base.clone();
                async move {
                    let opened = post(&client, format!("{base}/v1/sessions"), json!({})).await;
                    let id = opened["session_id"].as_str().expect("a session").to_string();
                    let code = format!("let state = {{ n: {i}, rows: [1, 2, 3], note: 'session {i}' }}");
                    let ran =
                        post(&client, format!("{base}/v1/execute"), json!({"session_id": id, "code": code})).await;
                    assert_eq!(ran["ok"], true, "{ran}");
                    id
                }
            })
            .buffered(8)
            .collect()
            .await;
        let opening = started.elapsed();
        tokio::time::sleep(Duration::from_secs(2)).await;
        let after = resident_kib(pid);

        let metrics = client.get(format!("{base}/metrics")).send().await.unwrap().text().await.unwrap();
        let gauge = |name: &str| -> f64 {
            metrics
                .lines()
                .find_map(|line| line.strip_prefix(name).and_then(|rest| rest.trim().parse().ok()))
                .unwrap_or(0.0)
        };
        let (kept, kept_bytes) = (gauge("sandgate_session_memories "), gauge("sandgate_session_memories_bytes "));
        // The 30 oldest sessions: their memories have left this replica long since,
        // so each execution reads its state from the store. Then the newest, whose
        // memory the replica still has.
        let (mut fresh, mut restored, mut kept_here) = (Vec::new(), Vec::new(), Vec::new());
        for (i, id) in ids.iter().take(30).enumerate() {
            let t = Instant::now();
            assert_eq!(execute(json!({"code": "return [1, 2, 3].length"})).await["result"], 3);
            fresh.push(t.elapsed());
            let t = Instant::now();
            let body = execute(json!({"session_id": id, "code": "state.rows.length + state.n"})).await;
            assert_eq!(body["result"], 3 + i, "{body}");
            restored.push(t.elapsed());
            let t = Instant::now();
            let body = execute(json!({"session_id": ids[count - 1], "code": "state.n"})).await;
            assert_eq!(body["result"], count - 1, "{body}");
            kept_here.push(t.elapsed());
        }
        if let Some(seconds) = std::env::var("SANDGATE_BENCH_PROFILE").ok().and_then(|s| s.parse::<u64>().ok()) {
            println!("server pid {pid}: executions in the newest session for {seconds} s");
            let (mut in_session, mut fresh_too) = (Vec::new(), Vec::new());
            let until = Instant::now() + Duration::from_secs(seconds);
            while Instant::now() < until {
                let t = Instant::now();
                let body = execute(json!({"session_id": ids[count - 1], "code": "state.n"})).await;
                assert_eq!(body["result"], count - 1, "{body}");
                in_session.push(t.elapsed());
            }
            for _ in 0..in_session.len() {
                let t = Instant::now();
                assert_eq!(execute(json!({"code": "return [1, 2, 3].length"})).await["result"], 3);
                fresh_too.push(t.elapsed());
            }
            println!(
                "{} executions in the newest session: p50 {:.2} ms, p99 {:.2} ms; as many fresh ones: p50 {:.2} ms, \
                 p99 {:.2} ms",
                in_session.len(),
                percentile(&mut in_session, 0.5),
                percentile(&mut in_session, 0.99),
                percentile(&mut fresh_too, 0.5),
                percentile(&mut fresh_too, 0.99)
            );
        }
        let shown = client.get(format!("{base}/v1/sessions/{}", ids[count - 1])).send().await.unwrap();
        let shown: Value = shown.json().await.unwrap();
        let ledger = std::fs::metadata(dir.join("ledger.db")).map(|m| m.len()).unwrap_or(0);
        println!(
            "{count} sessions opened and run once in {:.1} s ({:.1} ms each, 8 at a time)",
            opening.as_secs_f64(),
            opening.as_secs_f64() * 1e3 / count as f64
        );
        println!(
            "server resident memory: {:.1} MiB idle, {:.1} MiB with {count} idle sessions (+{:.1} MiB)",
            idle as f64 / 1024.0,
            after as f64 / 1024.0,
            (after as f64 - idle as f64) / 1024.0
        );
        println!(
            "state per session: {} KiB; store file {:.0} MiB",
            shown["state_bytes"].as_u64().unwrap_or(0) / 1024,
            ledger as f64 / (1 << 20) as f64
        );
        println!(
            "session memories kept by the server between executions: {kept} ({:.0} MiB, in memfds, not resident)",
            kept_bytes / (1 << 20) as f64
        );
        println!(
            "an old session's execution (state read from the store), over HTTP: p50 {:.2} ms; the newest session's \
             (memory kept here): p50 {:.2} ms; a fresh execution: p50 {:.2} ms",
            percentile(&mut restored, 0.5),
            percentile(&mut kept_here, 0.5),
            percentile(&mut fresh, 0.5)
        );
    });
    let _ = child.kill();
    let _ = child.wait();
    let _ = std::fs::remove_dir_all(&dir);
}
