//! Several sandgate replicas on one real PostgreSQL: budgets, rate limits and the
//! ledger hold across them, a replica killed mid-load loses nothing it acknowledged,
//! and PostgreSQL restarting gives clean 503s, then service again.

use std::time::{Duration, Instant};

use futures::StreamExt;
use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::harness::*;
use crate::postgres;
use crate::stub::Stub;

fn store_config(url: &str) -> String {
    format!("[store]\nurl = \"{url}\"\npool = 8\n")
}

/// Two in-process replicas with `config` and `policy`, on one fresh database.
async fn two_replicas(config: &str, policy: &str) -> (TestServer, TestServer, String) {
    let url = postgres::database().await;
    let config = format!("{config}\n{}", store_config(&url));
    (start_server_with(&config, policy), start_server_with(&config, policy), url)
}

/// The real binary serving `config` with its store at `url`: the process and its base URL.
fn real_replica(url: &str, config: &std::path::Path) -> (std::process::Child, String) {
    let mut command = crate::binary::sandgate();
    command.env("SANDGATE_STORE_URL", url).args(["serve", "--listen", "127.0.0.1:0", "--config"]).arg(config);
    crate::binary::start(command)
}

async fn usage(base: &str) -> Value {
    let response = client().get(format!("{base}/v1/usage")).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    response.json().await.unwrap()
}

/// What [`one_budget_on_two_replicas`] saw.
struct BudgetRun {
    answered: usize,
    spent: u64,
    /// The most calls upstream at once.
    peak: usize,
    /// The largest hold the store held at any moment, in tokens.
    largest_hold: i64,
}

/// `calls` concurrent model calls, split between two replicas, against a team budget
/// of `tokens_per_day`. Each call reserves its estimate (its input, counted, plus its
/// `max_tokens` of 1,000, about 1,003 tokens) before it goes upstream; the slow model
/// (3 s) keeps them in flight while the others arrive.
async fn one_budget_on_two_replicas(calls: usize, tokens_per_day: u64) -> BudgetRun {
    let stub = Stub::start();
    std::env::set_var("SANDGATE_TEST_PROVIDER_KEY", "sk-stub-test");
    let config = format!(
        r#"
[providers.openai]
kind = "openai"
base_url = "{}/v1"
api_key_env = "SANDGATE_TEST_PROVIDER_KEY"

[models.cheap]
provider = "openai"
upstream = "gpt-cheap-ok+slow3000"
tier = "economy"
input_per_mtok = 0.15
output_per_mtok = 0.6

[tiers.economy]
models = ["cheap"]
"#,
        stub.base
    );
    let policy = format!(
        r#"
[[policy]]
name = "budgeted"
principals = ["*"]
[policy.limits]
[policy.models]
tiers = ["economy"]
[policy.budget]
scope = "team"
tokens_per_day = {tokens_per_day}
"#
    );
    let (first, second, url) = two_replicas(&config, &policy).await;
    // The holds in the store, watched while the calls run.
    let (pg, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls).await.unwrap();
    tokio::spawn(connection);
    let watching = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let watcher = tokio::spawn({
        let watching = watching.clone();
        async move {
            let mut largest = 0_i64;
            while watching.load(std::sync::atomic::Ordering::Relaxed) {
                let row = pg.query_one("SELECT coalesce(max(tokens), 0) FROM budget_holds", &[]).await.unwrap();
                largest = largest.max(row.get::<_, i64>(0));
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            largest
        }
    });
    let requests = futures::stream::iter(0..calls).map(|i| {
        let base = if i % 2 == 0 { first.base.clone() } else { second.base.clone() };
        async move {
            let response = client()
                .post(format!("{base}/v1/chat/completions"))
                .json(&json!({"model": "cheap", "max_tokens": 1000, "messages": [{"role": "user", "content": "hi"}]}))
                .send()
                .await
                .unwrap();
            let status = response.status();
            let body: Value = response.json().await.unwrap();
            (status, body)
        }
    });
    let answers: Vec<(StatusCode, Value)> = requests.buffer_unordered(calls).collect().await;
    watching.store(false, std::sync::atomic::Ordering::Relaxed);
    let largest_hold = watcher.await.unwrap();
    let answered = answers.iter().filter(|(status, _)| *status == StatusCode::OK).count();
    let refused: Vec<&Value> =
        answers.iter().filter(|(s, _)| *s == StatusCode::TOO_MANY_REQUESTS).map(|(_, b)| b).collect();
    assert_eq!(answered + refused.len(), calls, "every call is answered or refused for the budget");
    // The OpenAI wire format names the kind in `error.code`.
    assert!(refused.iter().all(|body| body["error"]["code"] == "budget_exceeded"), "{:?}", refused.first());
    // A model call is recorded just after its answer is sent; both replicas then read
    // the one ledger.
    let deadline = Instant::now() + Duration::from_secs(10);
    let (one, other) = loop {
        let (one, other) = (usage(&first.base).await, usage(&second.base).await);
        if one["totals"]["model_calls"] == answered && other["totals"] == one["totals"] || Instant::now() > deadline {
            break (one, other);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(one["totals"], other["totals"]);
    let totals = &one["totals"];
    assert_eq!(totals["model_calls"].as_u64().unwrap(), answered as u64, "{totals}");
    assert!(stub.requests().len() == answered, "only reserved calls went upstream");
    let spent = totals["input_tokens"].as_u64().unwrap() + totals["output_tokens"].as_u64().unwrap();
    let peak = stub.peak_in_flight();
    println!(
        "budget of {tokens_per_day} tokens over two replicas: {answered} of {calls} calls answered, {spent} tokens \
         recorded, at most {peak} in flight, largest hold {largest_hold} tokens"
    );
    BudgetRun { answered, spent, peak, largest_hold }
}

/// A budget of 10,300 tokens covers ten calls: at most ten can be held at once,
/// whichever replica took them (a store per replica would let each hold ten). Spend
/// may pass a budget by at most the reservations in flight, and no call here can cost
/// more than it reserved, so the spend stays within the budget. Too small for a lease
/// of 16 calls, the replicas lease fewer, then hold calls one by one.
#[tokio::test]
async fn two_replicas_hold_one_budget_under_100_concurrent_calls() {
    let run = one_budget_on_two_replicas(100, 10_300).await;
    assert!(run.answered >= 10, "the ten the budget covers are answered: {}", run.answered);
    assert!(run.peak <= 10, "{} calls were in flight at once", run.peak);
    assert!(run.spent <= 10_300, "spend {} passed the budget", run.spent);
    assert!(run.largest_hold <= 10_300, "no hold passes the budget: {}", run.largest_hold);
}

/// A budget of 103,000 tokens covers 102 calls. Each replica leases headroom for 16
/// calls at a time and draws calls from it without a round trip; near the limit, calls
/// are held one by one. The bound is the same: never more in flight than the budget
/// covers, spend within it. Headroom a replica leased and had not drawn yet may keep
/// the other replica's calls out, at most 15 calls' worth per replica.
#[tokio::test]
async fn two_replicas_lease_headroom_and_stay_within_one_budget() {
    let run = one_budget_on_two_replicas(200, 103_000).await;
    assert!(run.largest_hold > 10_000, "replicas leased headroom for many calls: {}", run.largest_hold);
    assert!(run.peak <= 102, "{} calls were in flight at once", run.peak);
    assert!(run.spent <= 103_000, "spend {} passed the budget", run.spent);
    assert!(run.answered >= 102 - 2 * 15, "calls the budget covers are answered: {}", run.answered);
}

/// A rate limit of 20 executions a minute, over 60 requests split between two
/// replicas: the bucket is one row, refilled by the database clock, so the replicas
/// together allow 20, plus what refills while the test runs (one every 3 s).
#[tokio::test]
async fn two_replicas_share_one_rate_limit() {
    let policy = r#"
[[policy]]
name = "limited"
principals = ["*"]
[policy.limits]
[policy.rate]
executions_per_minute = 20
"#;
    let (first, second, _) = two_replicas("", policy).await;
    let started = Instant::now();
    let requests =
        futures::stream::iter(0..60).map(|i| {
            let base = if i % 2 == 0 { first.base.clone() } else { second.base.clone() };
            async move {
                client().post(format!("{base}/v1/execute")).json(&json!({"code": "return 1"})).send().await.unwrap()
            }
        });
    let responses: Vec<reqwest::Response> = requests.buffer_unordered(12).collect().await;
    let refill = (started.elapsed().as_secs_f64() / 3.0).ceil() as usize;
    let ok = responses.iter().filter(|r| r.status() == StatusCode::OK).count();
    let limited: Vec<&reqwest::Response> =
        responses.iter().filter(|r| r.status() == StatusCode::TOO_MANY_REQUESTS).collect();
    println!("rate limit of 20/min over two replicas: {ok} of 60 allowed (refill allowance {refill})");
    assert_eq!(ok + limited.len(), 60);
    assert!((20..=20 + refill).contains(&ok), "{ok} allowed");
    assert!(limited.iter().all(|r| r.headers().contains_key("retry-after")));
}

/// `kill -9` of one replica in the middle of a load spread over two: every execution
/// that got a 200 is in the ledger, and the other replica keeps serving.
#[tokio::test]
async fn a_replica_killed_mid_load_loses_no_acknowledged_execution() {
    use crate::binary::served_dir;
    use std::process::Command;
    let url = postgres::database().await;
    let config = served_dir("replicas").join("sandgate.toml");
    let (mut doomed, doomed_base) = real_replica(&url, &config);
    let (mut survivor, survivor_base) = real_replica(&url, &config);
    let acknowledged = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let pid = doomed.id();
    let load = futures::stream::iter(0..300).map(|i| {
        let to_survivor = i % 2 == 1;
        let base = if to_survivor { survivor_base.clone() } else { doomed_base.clone() };
        let acknowledged = acknowledged.clone();
        async move {
            let request =
                client().post(format!("{base}/v1/execute")).json(&json!({"code": "return input", "input": i}));
            let Ok(response) = request.send().await else {
                return (to_survivor, None);
            };
            if response.status() != StatusCode::OK {
                return (to_survivor, Some(response.status()));
            }
            let Ok(body) = response.json::<Value>().await else {
                return (to_survivor, None);
            };
            let mut acked = acknowledged.lock().unwrap();
            acked.push(body["execution_id"].as_str().unwrap().to_string());
            if acked.len() == 80 {
                Command::new("kill").args(["-KILL", &pid.to_string()]).status().unwrap();
            }
            (to_survivor, Some(StatusCode::OK))
        }
    });
    let statuses: Vec<(bool, Option<StatusCode>)> = load.buffer_unordered(16).collect().await;
    doomed.wait().unwrap();
    let acknowledged = acknowledged.lock().unwrap().clone();
    let survivor_ok =
        statuses.iter().filter(|(to_survivor, status)| *to_survivor && *status == Some(StatusCode::OK)).count();
    assert_eq!(survivor_ok, 150, "the survivor served every request sent to it: {statuses:?}");
    assert!(statuses.iter().all(|(_, status)| matches!(status, None | Some(StatusCode::OK))), "{statuses:?}");
    assert!(acknowledged.len() >= 150 + 30 && acknowledged.len() < 300, "{} acknowledged", acknowledged.len());

    let (client_pg, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls).await.unwrap();
    tokio::spawn(connection);
    let ids: Vec<String> =
        client_pg.query("SELECT id FROM executions", &[]).await.unwrap().iter().map(|r| r.get(0)).collect();
    let ids: std::collections::HashSet<String> = ids.into_iter().collect();
    for id in &acknowledged {
        assert!(ids.contains(id), "acknowledged execution {id} is missing from the ledger");
    }
    let response =
        client().post(format!("{survivor_base}/v1/execute")).json(&json!({"code": "return 7"})).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::OK, "the survivor keeps serving");
    crate::binary::terminate(&survivor);
    survivor.wait().unwrap();
}

/// PostgreSQL stopped under load: requests that need the store get a clean 503
/// (`unavailable`, with Retry-After), never a panic or a hang; once it is back the
/// same replica serves again, with no restart.
#[tokio::test]
async fn postgres_restarting_gives_clean_503s_then_service_again() {
    let cluster = postgres::Cluster::own();
    let url = cluster.url("postgres");
    let server = start_server_with(&format!("[sandbox]\ntest_capability = true\n{}", store_config(&url)), TEST_POLICY);
    let execute = |code: &'static str| {
        let base = server.base.clone();
        async move { client().post(format!("{base}/v1/execute")).json(&json!({"code": code})).send().await.unwrap() }
    };
    let ready = || {
        let base = server.base.clone();
        async move { client().get(format!("{base}/readyz")).send().await.unwrap().status() }
    };
    assert_eq!(execute("return 1").await.status(), StatusCode::OK);
    assert_eq!(ready().await, StatusCode::OK);

    cluster.stop();
    assert_eq!(ready().await, StatusCode::SERVICE_UNAVAILABLE, "not ready while the store is down");
    let live = client().get(format!("{}/healthz", server.base)).send().await.unwrap();
    assert_eq!(live.status(), StatusCode::OK, "but alive");
    let load = futures::future::join_all((0..20).map(|_| execute("return 2"))).await;
    for response in load {
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert!(response.headers().contains_key("retry-after"));
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["error"]["kind"], "unavailable", "{body}");
    }
    let report = client().get(format!("{}/v1/usage", server.base)).send().await.unwrap();
    assert_eq!(report.status(), StatusCode::SERVICE_UNAVAILABLE);

    cluster.restart();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let response = execute("return 3").await;
        if response.status() == StatusCode::OK {
            break;
        }
        assert!(Instant::now() < deadline, "the replica did not recover: {}", response.status());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(ready().await, StatusCode::OK);
    let report = usage(&server.base).await;
    assert!(report["totals"]["executions"].as_u64().unwrap() >= 2, "{report}");
}

/// `sandgate key create` and `key revoke` against the shared store take effect on
/// every replica within seconds, with no SIGHUP.
#[tokio::test]
async fn keys_created_or_revoked_on_one_machine_reach_every_replica() {
    let url = postgres::database().await;
    let cli = |args: &[&str]| {
        let output = crate::binary::sandgate()
            .env("SANDGATE_STORE_URL", &url)
            .env("SANDGATE_CONFIG", temp_dir("no-config").join("sandgate.toml"))
            .args(args)
            .output()
            .unwrap();
        let stdout = String::from_utf8(output.stdout).unwrap();
        (output.status.code(), stdout.trim().to_string(), String::from_utf8_lossy(&output.stderr).into_owned())
    };
    // Replicas start keyed when the store has a key.
    let (code, admin, stderr) =
        cli(&["key", "create", "--user", "root", "--team", "ops", "--role", "admin", "--name", "ops"]);
    assert_eq!(code, Some(0), "{stderr}");
    assert!(stderr.contains("recorded in the store"), "{stderr}");
    let config = format!("[sandbox]\ntest_capability = true\n{}", store_config(&url));
    let replicas = [start_server_with(&config, TEST_POLICY), start_server_with(&config, TEST_POLICY)];
    let status = |base: String, key: String| async move {
        client()
            .post(format!("{base}/v1/execute"))
            .bearer_auth(key)
            .json(&json!({"code": "return 1"}))
            .send()
            .await
            .unwrap()
            .status()
    };
    for replica in &replicas {
        assert_eq!(status(replica.base.clone(), admin.clone()).await, StatusCode::OK);
    }

    let (code, key, stderr) =
        cli(&["key", "create", "--user", "alice", "--team", "platform", "--name", "alice-laptop"]);
    assert_eq!(code, Some(0), "{stderr}");
    let (_, listed, _) = cli(&["key", "list"]);
    assert!(listed.contains("alice-laptop") && listed.contains("store"), "{listed}");
    let within = |expected: StatusCode| {
        let key = key.clone();
        let bases: Vec<String> = replicas.iter().map(|r| r.base.clone()).collect();
        async move {
            let started = Instant::now();
            for base in bases {
                loop {
                    let got = status(base.clone(), key.clone()).await;
                    if got == expected {
                        break;
                    }
                    assert!(started.elapsed() < Duration::from_secs(10), "{base}: still {got} after 10 s");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
            started.elapsed()
        }
    };
    let took = within(StatusCode::OK).await;
    println!("a new key was in force on both replicas after {took:?}");

    let (code, _, stderr) = cli(&["key", "revoke", "alice-laptop"]);
    assert_eq!(code, Some(0), "{stderr}");
    let took = within(StatusCode::UNAUTHORIZED).await;
    println!("a revoked key was refused on both replicas after {took:?}");
    let (code, _, stderr) = cli(&["key", "revoke", "alice-laptop"]);
    assert_eq!(code, Some(1));
    assert!(stderr.contains("no key named `alice-laptop`"), "{stderr}");
    for replica in &replicas {
        assert_eq!(status(replica.base.clone(), admin.clone()).await, StatusCode::OK, "other keys stay");
    }
}

/// The deployment guide's HAProxy configuration (`deploy/haproxy.cfg`), run for real
/// in front of two replicas: requests reach both, and when one is killed the other
/// takes every request (HAProxy retries what could not connect and its /readyz check
/// takes the dead one out within about two seconds).
#[tokio::test]
async fn haproxy_in_front_of_two_replicas_keeps_serving_when_one_dies() {
    use std::process::Command;
    let url = postgres::database().await;
    let config = crate::binary::served_dir("haproxy").join("sandgate.toml");
    let (mut a, a_base) = real_replica(&url, &config);
    let (mut b, b_base) = real_replica(&url, &config);
    let lb = format!("127.0.0.1:{}", free_port());
    let haproxy = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/haproxy.cfg");
    let mut proxy = Command::new("haproxy")
        .args(["-db", "-f"])
        .arg(&haproxy)
        .env("SANDGATE_LB", &lb)
        .env("REPLICA_A", a_base.trim_start_matches("http://"))
        .env("REPLICA_B", b_base.trim_start_matches("http://"))
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("haproxy starts (Debian: apt-get install haproxy; tests/run installs it)");
    let base = format!("http://{lb}");
    let deadline = Instant::now() + Duration::from_secs(20);
    while client().get(format!("{base}/readyz")).send().await.ok().map(|r| r.status()) != Some(StatusCode::OK) {
        assert!(Instant::now() < deadline, "HAProxy never reported a ready replica");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let burst = |n: usize| {
        let base = base.clone();
        async move {
            let requests = futures::stream::iter(0..n).map(|i| {
                let base = base.clone();
                async move {
                    let request =
                        client().post(format!("{base}/v1/execute")).json(&json!({"code": "return input", "input": i}));
                    request.send().await.map(|r| r.status()).ok()
                }
            });
            requests.buffer_unordered(8).collect::<Vec<_>>().await
        }
    };
    let statuses = burst(40).await;
    assert!(statuses.iter().all(|s| *s == Some(StatusCode::OK)), "{statuses:?}");
    let executed = |base: String| async move {
        let text = client().get(format!("{base}/metrics")).send().await.unwrap().text().await.unwrap();
        text.lines()
            .filter(|l| l.starts_with("sandgate_executions_total"))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum::<f64>()
    };
    let (on_a, on_b) = (executed(a_base.clone()).await, executed(b_base.clone()).await);
    assert!(on_a >= 1.0 && on_b >= 1.0 && on_a + on_b >= 40.0, "a ran {on_a}, b ran {on_b}");

    Command::new("kill").args(["-KILL", &a.id().to_string()]).status().unwrap();
    a.wait().unwrap();
    let statuses = burst(40).await;
    assert!(statuses.iter().all(|s| *s == Some(StatusCode::OK)), "after a replica died: {statuses:?}");
    let report = usage(&base).await;
    assert!(report["totals"]["executions"].as_u64().unwrap() >= 80, "{report}");

    let _ = proxy.kill();
    let _ = proxy.wait();
    crate::binary::terminate(&b);
    b.wait().unwrap();
}

/// A store URL with `sslmode=require` connects over TLS and verifies the server's
/// certificate: against a CA named by `SSL_CERT_FILE` it works; against the system's
/// roots, which do not know that CA, it is refused.
#[tokio::test]
async fn a_store_over_tls_verifies_the_server_certificate() {
    use std::process::Command;
    let dir = temp_dir("pg-tls");
    let openssl = |args: &[&str]| {
        let output = Command::new("openssl").args(args).current_dir(&dir).output().expect("openssl runs");
        assert!(output.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&output.stderr));
    };
    openssl(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "ca.key",
        "-out",
        "ca.crt",
        "-days",
        "2",
        "-subj",
        "/CN=sandgate test CA",
    ]);
    openssl(&[
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "server.key",
        "-out",
        "server.csr",
        "-subj",
        "/CN=127.0.0.1",
    ]);
    std::fs::write(dir.join("san.ext"), "subjectAltName=IP:127.0.0.1,DNS:localhost\n").unwrap();
    openssl(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.crt",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "server.crt",
        "-days",
        "2",
        "-extfile",
        "san.ext",
    ]);
    let cluster = postgres::Cluster::own();
    cluster.restart_with_tls(&dir.join("server.crt"), &dir.join("server.key"));
    let url = format!("{}?sslmode=require", cluster.url("postgres"));
    let usage = |ca: Option<&std::path::Path>| {
        let mut command = crate::binary::sandgate();
        command.env("SANDGATE_STORE_URL", &url).env_remove("SSL_CERT_FILE").env_remove("SSL_CERT_DIR");
        if let Some(ca) = ca {
            command.env("SSL_CERT_FILE", ca);
        }
        command.arg("usage").output().unwrap()
    };
    let trusted = usage(Some(&dir.join("ca.crt")));
    assert!(trusted.status.success(), "{}", String::from_utf8_lossy(&trusted.stderr));
    assert!(String::from_utf8_lossy(&trusted.stdout).contains("total"));
    let untrusted = usage(None);
    assert!(!untrusted.status.success(), "a certificate from an unknown CA was accepted");
    let stderr = String::from_utf8_lossy(&untrusted.stderr);
    assert!(stderr.contains("certificate") || stderr.contains("UnknownIssuer"), "{stderr}");
}

/// The issue's whole story, with real parts: two replicas of the real binary on one
/// PostgreSQL and the real filesystem MCP server. An operator says merges into main
/// need a lead. The agent's code makes one edit, then asks to "merge into main": the
/// execution pauses on replica A. A is killed with `kill -9`. A lead approves on
/// replica B, and the execution completes on B, every call made exactly once (each
/// edit appends its mark to one file, so a call made twice would show twice). A merge
/// into another branch runs straight through.
#[tokio::test]
async fn an_approval_on_one_replica_resumes_an_execution_paused_on_a_replica_killed_since() {
    use crate::binary::{start, terminate};
    let url = postgres::database().await;
    let dir = temp_dir("approvals-replicas");
    let work = dir.join("repo");
    std::fs::create_dir_all(&work).unwrap();
    let work = work.canonicalize().unwrap();
    let counter = work.join("merges.txt");
    std::fs::write(&counter, "END").unwrap();
    let dev = api_key("dev", "dana", "platform", "member");
    let lead = api_key("lead", "lee", "leads", "member");
    std::fs::create_dir_all(dir.join("policies")).unwrap();
    std::fs::write(
        dir.join("policies/merges.toml"),
        r#"[[policy]]
name = "agents"
principals = ["*"]
[policy.limits]
wall_ms = 30_000
[policy.tools]
allow = ["files.*"]
[[policy.rules]]
tools = ["files.edit_file"]
when = "args.edits.exists(e, e.newText.startsWith('main'))"
decision = "approve"
approvers = ["team:leads"]
reason = "merges into main need a lead"
"#,
    )
    .unwrap();
    let config = dir.join("sandgate.toml");
    std::fs::write(
        &config,
        format!(
            "policies = \"policies\"\n{}{}\n[mcp.servers.files]\ncommand = \"{}\"\nargs = [\"{}\"]\n",
            dev.entry,
            lead.entry,
            crate::mcp::npm_bin("mcp-server-filesystem").display(),
            work.display()
        ),
    )
    .unwrap();
    let replica = || {
        let mut command = crate::binary::sandgate();
        command.env("SANDGATE_STORE_URL", &url).args(["serve", "--listen", "127.0.0.1:0", "--config"]).arg(&config);
        start(command)
    };
    let (mut a, a_base) = replica();
    let (mut b, b_base) = replica();
    for base in [&a_base, &b_base] {
        let (base, token) = (base.clone(), dev.token.clone());
        tokio::task::spawn_blocking(move || crate::mcp::wait_for_tools(&base, &token, &["files.edit_file"]))
            .await
            .unwrap();
    }
    let path = counter.display().to_string();
    let edit = |mark: &str| {
        format!("await tools.files.edit_file({{path: {path:?}, edits: [{{oldText: 'END', newText: '{mark}END'}}]}});")
    };
    let code = format!("{}\n{}\n{}\nreturn 'merged'", edit("a"), edit("main"), edit("z"));
    let (status, paused) =
        call(reqwest::Method::POST, format!("{a_base}/v1/execute"), &dev.token, Some(json!({"code": code}))).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{paused}");
    let id = paused["execution_id"].as_str().unwrap().to_string();
    let approval = paused["approvals"][0]["id"].as_str().unwrap().to_string();
    assert_eq!(std::fs::read_to_string(&counter).unwrap(), "aEND", "the first edit was made, the merge waits");

    // Replica A dies with the execution paused on it.
    std::process::Command::new("kill").args(["-KILL", &a.id().to_string()]).status().unwrap();
    a.wait().unwrap();

    // A lead approves on B; B resumes the execution where it stopped.
    let (status, decided) = call(
        reqwest::Method::POST,
        format!("{b_base}/v1/approvals/{approval}"),
        &lead.token,
        Some(json!({"decision": "approve"})),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{decided}");
    let done = crate::pauses::over_http::ended(&b_base, &dev.token, &id).await;
    assert_eq!(done["status"], "succeeded", "{done}");
    assert_eq!(done["result"]["result"], "merged", "{done}");
    assert_eq!(std::fs::read_to_string(&counter).unwrap(), "amainzEND", "every edit exactly once");

    // A merge into another branch runs straight through, with no approval.
    let code = edit("dev");
    let (status, body) =
        call(reqwest::Method::POST, format!("{b_base}/v1/execute"), &dev.token, Some(json!({"code": code}))).await;
    assert_eq!((status, body["ok"].as_bool()), (StatusCode::OK, Some(true)), "{body}");
    assert_eq!(std::fs::read_to_string(&counter).unwrap(), "amainzdevEND");

    // The ledger: the paused execution once, its three calls once each, all under its id.
    let (pg, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls).await.unwrap();
    tokio::spawn(connection);
    let calls = pg
        .query("SELECT name, outcome FROM calls WHERE execution_id = $1 ORDER BY started_at_ms", &[&id])
        .await
        .unwrap();
    let calls: Vec<(String, String)> = calls.iter().map(|r| (r.get(0), r.get(1))).collect();
    assert_eq!(calls, vec![("tools.files.edit_file".to_string(), "ok".to_string()); 3], "{calls:?}");
    let executions = pg.query("SELECT outcome FROM executions WHERE id = $1", &[&id]).await.unwrap();
    assert_eq!(executions.len(), 1);
    let approvals = pg
        .query(
            "SELECT status, decided_by, decided_at_ms - created_at_ms FROM approvals WHERE execution_id = $1",
            &[&id],
        )
        .await
        .unwrap();
    assert_eq!(approvals.len(), 1);
    assert_eq!(approvals[0].get::<_, String>(0), "approved");
    assert_eq!(approvals[0].get::<_, String>(1), "lee (team leads)");
    assert!(approvals[0].get::<_, i64>(2) >= 0);
    terminate(&b);
    b.wait().unwrap();
}
