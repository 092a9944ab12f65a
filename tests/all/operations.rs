//! What a hostile client meets at the edges: connections that never finish, key
//! reloads, per-principal shares of the server, MCP sessions that belong to their
//! owner, shutdown with a deadline, and embedded defaults that fit one developer.

use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::binary::{sandgate, serve, served_dir, start, terminate};
use crate::departures::{mcp_post, mcp_session};
use crate::harness::*;

/// Reads from `stream` until it is closed; `Some(bytes read)` if it closed within
/// `within`, `None` if it was still open.
async fn closed_within(stream: &mut TcpStream, within: Duration) -> Option<String> {
    let mut received = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + within;
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return Some(String::from_utf8_lossy(&received).into_owned()),
            Ok(Ok(n)) => received.extend_from_slice(&buf[..n]),
            Err(_) => return None,
        }
    }
}

async fn connect(base: &str) -> TcpStream {
    TcpStream::connect(base.strip_prefix("http://").unwrap()).await.unwrap()
}

#[tokio::test]
async fn slow_and_idle_connections_are_closed() {
    let server = start_server_with(
        "[sandbox]\ntest_capability = true\n[http]\nheader_timeout_ms = 400\nbody_timeout_ms = 600\nidle_timeout_ms = 900\n",
        TEST_POLICY,
    );
    let base = &server.base;

    // Headers that never finish.
    let mut partial = connect(base).await;
    partial.write_all(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ").await.unwrap();
    let started = Instant::now();
    assert!(closed_within(&mut partial, Duration::from_secs(5)).await.is_some(), "partial headers were kept open");
    assert!(started.elapsed() >= Duration::from_millis(350), "closed before the header timeout");

    // A body that never finishes: 408.
    let mut slow_body = connect(base).await;
    slow_body
        .write_all(b"POST /v1/execute HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"code\"")
        .await
        .unwrap();
    let response = closed_within(&mut slow_body, Duration::from_secs(5)).await.expect("the slow body was kept open");
    assert!(response.starts_with("HTTP/1.1 408"), "{response}");

    // An idle keep-alive connection, after one request.
    let mut idle = connect(base).await;
    idle.write_all(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n").await.unwrap();
    let mut buf = [0u8; 1024];
    let n = idle.read(&mut buf).await.unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
    let started = Instant::now();
    assert!(closed_within(&mut idle, Duration::from_secs(5)).await.is_some(), "the idle connection was kept open");
    assert!(started.elapsed() >= Duration::from_millis(800), "closed before the idle timeout");

    // A connection with an execution in flight is not idle, however long it takes.
    let (status, body) = post_to(base, json!({"code": "await tools.test.sleep({ms: 1500}); return 'done'"})).await;
    assert_eq!((status.as_u16(), &body["result"]), (200, &json!("done")), "{body}");
}

#[tokio::test]
async fn a_thousand_slow_or_idle_connections_do_not_stop_health_or_executions() {
    let server = start_server_with("[sandbox]\ntest_capability = true\n", TEST_POLICY);
    let mut held = Vec::new();
    for i in 0..1000 {
        let mut stream = connect(&server.base).await;
        if i % 2 == 0 {
            stream.write_all(b"POST /v1/execute HTTP/1.1\r\nHost: 127.0.0.1\r\n").await.unwrap();
        }
        held.push(stream);
    }
    let patient = reqwest::Client::builder().timeout(Duration::from_secs(5)).build().unwrap();
    let health = patient.get(format!("{}/healthz", server.base)).send().await.unwrap();
    assert_eq!(health.status(), 200);
    let body: Value = patient
        .post(format!("{}/v1/execute", server.base))
        .json(&json!({"code": "return 6 * 7"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(body["result"], 42, "{body}");
    drop(held);
}

#[tokio::test]
async fn at_the_open_file_limit_idle_connections_make_room() {
    let dir = served_dir("fd-limit");
    let config = dir.join("sandgate.toml");
    let mut command = Command::new("sh");
    command
        .args(["-c", "ulimit -n 256 && exec \"$0\" serve --listen 127.0.0.1:0 --config \"$1\""])
        .arg(env!("CARGO_BIN_EXE_sandgate"))
        .arg(&config)
        .env("SANDGATE_CACHE_DIR", cache_dir())
        .env_remove("SANDGATE_CONFIG");
    let (mut child, base) = start(command);
    let mut held = Vec::new();
    for _ in 0..260 {
        held.push(connect(&base).await);
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let patient = reqwest::Client::builder().timeout(Duration::from_secs(5)).build().unwrap();
    for _ in 0..3 {
        let health = patient.get(format!("{base}/healthz")).send().await.unwrap();
        assert_eq!(health.status(), 200);
    }
    let (status, body) = post_to(&base, json!({"code": "return 1"})).await;
    assert_eq!((status.as_u16(), &body["result"]), (200, &json!(1)), "{body}");
    drop(held);
    terminate(&child);
    child.wait().unwrap();
}

#[tokio::test]
async fn shutdown_waits_for_its_grace_period_then_cancels_and_records() {
    let dir = served_dir("grace");
    std::fs::write(
        dir.join("sandgate.toml"),
        "policies = \"policies\"\n[ledger]\npath = \"ledger.db\"\n[sandbox]\ntest_capability = true\n[http]\nshutdown_grace_ms = 800\n",
    )
    .unwrap();
    std::fs::write(
        dir.join("policies/all.toml"),
        "[[policy]]\nname = \"all\"\nprincipals = [\"*\"]\n[policy.limits]\nwall_ms = 60_000\n[policy.tools]\nallow = [\"test.*\"]\n",
    )
    .unwrap();
    let config = dir.join("sandgate.toml");
    let (mut child, base) = serve(&["--config", config.to_str().unwrap()]);
    // A client that never finishes its headers, and an execution that would run 30 s.
    let mut slow = connect(&base).await;
    slow.write_all(b"GET /healthz HTTP/1.1\r\n").await.unwrap();
    let long = tokio::spawn({
        let base = base.clone();
        async move { post_to(&base, json!({"code": "await tools.test.sleep({ms: 30000}); return 1"})).await }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let stopping = Instant::now();
    terminate(&child);
    let status = tokio::task::spawn_blocking(move || child.wait().unwrap()).await.unwrap();
    assert!(status.success(), "{status}");
    let took = stopping.elapsed();
    assert!(took >= Duration::from_millis(700) && took < Duration::from_secs(10), "shutdown took {took:?}");
    let (status, body) = long.await.unwrap();
    assert_eq!((status.as_u16(), &body["error"]["kind"]), (200, &json!("cancelled")), "{body}");
    let ledger = rusqlite::Connection::open(dir.join("ledger.db")).unwrap();
    let (outcome, calls): (String, String) = ledger
        .query_row(
            "SELECT e.outcome, c.outcome FROM executions e JOIN calls c ON c.execution_id = e.id WHERE e.id = ?1",
            [body["execution_id"].as_str().unwrap()],
            |row| Ok((row.get(0)?, row.get(1)?)),
        )
        .unwrap();
    assert_eq!((outcome.as_str(), calls.as_str()), ("cancelled", "cancelled"));
}

#[tokio::test]
async fn a_reload_that_removes_the_last_key_refuses_everyone() {
    let dir = served_dir("last-key");
    let config = dir.join("sandgate.toml");
    let key = api_key("only", "alice", "platform", "admin");
    let keyless = std::fs::read_to_string(&config).unwrap();
    std::fs::write(&config, format!("{keyless}{}", key.entry)).unwrap();
    let (child, base) = serve(&["--config", config.to_str().unwrap()]);
    let (status, _) = post_as(&base, Some(&key.token), json!({"code": "return 1"})).await;
    assert_eq!(status, 200);

    std::fs::write(&config, &keyless).unwrap();
    Command::new("kill").args(["-HUP", &child.id().to_string()]).status().unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while post_as(&base, Some(&key.token), json!({"code": "return 1"})).await.0 == 200 {
        assert!(Instant::now() < deadline, "the removed key still works");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for token in [None, Some(key.token.as_str()), Some("sg_whatever")] {
        let (status, _) = post_as(&base, token, json!({"code": "return 1"})).await;
        assert_eq!(status, 401, "{token:?}");
        let mut usage = client().get(format!("{base}/v1/usage"));
        let mut mcp = client()
            .post(format!("{base}/mcp"))
            .header("host", "evil.example")
            .header("accept", "application/json, text/event-stream")
            .json(&json!({"jsonrpc": "2.0", "id": 1, "method": "tools/list"}));
        if let Some(token) = token {
            usage = usage.bearer_auth(token);
            mcp = mcp.bearer_auth(token);
        }
        assert_eq!(usage.send().await.unwrap().status(), 401, "{token:?}");
        assert_eq!(mcp.send().await.unwrap().status(), 401, "{token:?}");
    }
    terminate(&child);
}

#[tokio::test]
async fn the_local_principal_is_never_served_on_a_public_listener() {
    let mut config = sandgate::config::Config::default();
    config.sandbox.cache_dir = Some(cache_dir().into());
    config.store = sandgate::config::StoreConfig::Sqlite {
        path: temp_dir("public-local").join("ledger.db"),
        synchronous: Default::default(),
    };
    let server = sandgate::Server::new(config).await.unwrap();
    let listener = tokio::net::TcpListener::bind("0.0.0.0:0").await.unwrap();
    let error = server.serve(listener, std::future::pending()).await.unwrap_err();
    assert!(error.to_string().contains("loopback"), "{error}");
}

#[tokio::test]
async fn one_principal_cannot_take_every_slot() {
    let alice = api_key("alice", "alice", "a", "member");
    let bob = api_key("bob", "bob", "b", "member");
    let policy = "[[policy]]\nname = \"all\"\nprincipals = [\"*\"]\n[policy.limits]\nconcurrent = 2\n[policy.tools]\nallow = [\"test.*\"]\n";
    let server = start_server_with(&format!("[sandbox]\ntest_capability = true\n{}{}", alice.entry, bob.entry), policy);
    let slow = json!({"code": "await tools.test.sleep({ms: 1500}); return 'slow'"});
    let parked: Vec<_> = (0..2).map(|_| post_as(&server.base, Some(&alice.token), slow.clone())).collect();
    let probes = async {
        tokio::time::sleep(Duration::from_millis(400)).await;
        let over = client()
            .post(format!("{}/v1/execute", server.base))
            .bearer_auth(&alice.token)
            .json(&json!({"code": "return 1"}))
            .send()
            .await
            .unwrap();
        let (status, retry) = (over.status(), over.headers().get("retry-after").cloned());
        let body: Value = over.json().await.unwrap();
        let other = post_as(&server.base, Some(&bob.token), json!({"code": "return 'bob'"})).await;
        (status, retry, body, other)
    };
    let (parked, (status, retry, body, (bob_status, bob_body))) =
        tokio::join!(futures::future::join_all(parked), probes);
    assert_eq!(status, 429, "{body}");
    assert!(retry.is_some());
    assert_eq!(body["error"]["kind"], "rate_limited");
    assert!(body["error"]["message"].as_str().unwrap().contains("limits.concurrent"), "{body}");
    assert_eq!((bob_status.as_u16(), &bob_body["result"]), (200, &json!("bob")), "{bob_body}");
    for (status, body) in parked {
        assert_eq!((status.as_u16(), &body["result"]), (200, &json!("slow")), "{body}");
    }
    let (status, _) = post_as(&server.base, Some(&alice.token), json!({"code": "return 1"})).await;
    assert_eq!(status, 200, "the share is given back when executions end");
}

#[tokio::test]
async fn mcp_sessions_belong_to_their_principal_and_are_capped() {
    let alice = api_key("alice", "alice", "a", "member");
    let bob = api_key("bob", "bob", "b", "member");
    let config = format!(
        "[sandbox]\ntest_capability = true\n[mcp]\nmax_sessions = 3\nmax_sessions_per_principal = 2\n{}{}",
        alice.entry, bob.entry
    );
    let server = start_server_with(&config, TEST_POLICY);
    let base = &server.base;
    let list = json!({"jsonrpc": "2.0", "id": 7, "method": "tools/list"});
    let status_of = |key: &str, session: &str| {
        let (key, session, list, base) = (key.to_string(), session.to_string(), list.clone(), base.clone());
        async move { mcp_post(&client(), &base, &key, Some(&session), &list).await.unwrap().status().as_u16() }
    };

    let a1 = mcp_session(base, &alice.token).await;
    assert_eq!(status_of(&alice.token, &a1).await, 200);
    // Bob knows the id: he can neither use it, nor read its stream, nor close it.
    assert_eq!(status_of(&bob.token, &a1).await, 404);
    let stream = client()
        .get(format!("{base}/mcp"))
        .bearer_auth(&bob.token)
        .header("accept", "text/event-stream")
        .header("mcp-session-id", &a1)
        .send()
        .await
        .unwrap();
    assert_eq!(stream.status(), 404);
    let delete = client()
        .delete(format!("{base}/mcp"))
        .bearer_auth(&bob.token)
        .header("mcp-session-id", &a1)
        .send()
        .await
        .unwrap();
    assert_eq!(delete.status(), 404);
    assert_eq!(status_of(&alice.token, &a1).await, 200, "alice's session survives");

    // Past two sessions, alice's longest-idle one is closed to make room.
    let a2 = mcp_session(base, &alice.token).await;
    let a3 = mcp_session(base, &alice.token).await;
    assert_eq!(status_of(&alice.token, &a1).await, 404, "the oldest idle session was closed");
    assert_eq!((status_of(&alice.token, &a2).await, status_of(&alice.token, &a3).await), (200, 200));
    // Past three in all, the longest-idle session of anyone is closed.
    let b1 = mcp_session(base, &bob.token).await;
    assert_eq!(status_of(&alice.token, &a2).await, 200, "three sessions fit");
    let b2 = mcp_session(base, &bob.token).await;
    assert_eq!((status_of(&bob.token, &b1).await, status_of(&bob.token, &b2).await), (200, 200));
    assert_eq!(status_of(&alice.token, &a3).await, 404, "the server-wide cap closed the longest-idle session");
    assert_eq!(status_of(&alice.token, &a2).await, 200);
}

#[tokio::test]
async fn the_embedded_defaults_do_not_rate_limit_the_local_user() {
    // No configuration and no ./policies: the embedded defaults and example policies.
    let dir = temp_dir("defaults");
    let mut command = sandgate();
    command.args(["serve", "--listen", "127.0.0.1:0"]).current_dir(&dir);
    let (mut child, base) = start(command);
    let results = futures::future::join_all((0..150).map(|i| {
        let base = base.clone();
        async move { post_to(&base, json!({"code": "return input", "input": i})).await }
    }))
    .await;
    for (i, (status, body)) in results.into_iter().enumerate() {
        assert_eq!((status.as_u16(), &body["result"]), (200, &json!(i)), "{body}");
    }
    terminate(&child);
    child.wait().unwrap();
}
