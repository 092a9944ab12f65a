//! Clients that leave: whatever a client does (hang up a JSON request, close an SSE
//! stream, time out on an MCP call, drop a proxied model call, let an execution pass
//! its wall clock while a model call is in flight), every execution, host call and
//! model call is recorded, budgets are charged, and the tokens in the ledger are
//! exactly what the provider billed.

use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::harness::*;
use crate::stub::Stub;

const POLICY: &str = r#"
[[policy]]
name = "everyone"
principals = ["*"]
except = ["user:budget"]
[policy.limits]
wall_ms = 10_000
[policy.tools]
allow = ["test.*"]
[policy.models]
tiers = ["economy", "standard", "frontier"]

[[policy]]
name = "budget"
principals = ["user:budget"]
[policy.limits]
[policy.models]
tiers = ["economy", "standard", "frontier"]
[policy.budget]
scope = "user"
tokens_per_day = 24
"#;

struct Setup {
    stub: Stub,
    server: TestServer,
    keys: std::collections::BTreeMap<&'static str, String>,
}

fn setup() -> Setup {
    let stub = Stub::start();
    std::env::set_var("SANDGATE_TEST_PROVIDER_KEY", "sk-stub-test");
    let users = ["json", "sse", "mcp", "mcpcancel", "proxy", "stream", "chat", "budget", "done"];
    let mut keys = std::collections::BTreeMap::new();
    let mut entries = String::new();
    for user in users {
        let key = api_key(user, user, "departures", "member");
        keys.insert(user, key.token);
        entries.push_str(&key.entry);
    }
    let config = format!(
        r#"
[sandbox]
test_capability = true

[providers.openai]
kind = "openai"
base_url = "{base}/v1"
api_key_env = "SANDGATE_TEST_PROVIDER_KEY"

[providers.anthropic]
kind = "anthropic"
base_url = "{base}"
api_key_env = "SANDGATE_TEST_PROVIDER_KEY"

[models.steady]
provider = "openai"
upstream = "gpt-steady-ok"
tier = "economy"
input_per_mtok = 1.0
output_per_mtok = 2.0

[models.slow]
provider = "openai"
upstream = "gpt-late-ok+slow2500"
tier = "standard"
input_per_mtok = 1.0
output_per_mtok = 2.0

[models.trickle]
provider = "openai"
upstream = "gpt-trickle-ok+gap300"
tier = "standard"
input_per_mtok = 1.0
output_per_mtok = 2.0

[models.claude-slow]
provider = "anthropic"
upstream = "claude-late-ok+slow2500"
tier = "frontier"
input_per_mtok = 3.0
output_per_mtok = 15.0

[models.claude-trickle]
provider = "anthropic"
upstream = "claude-trickle-ok+gap300"
tier = "frontier"
input_per_mtok = 3.0
output_per_mtok = 15.0

[tiers.economy]
models = ["steady"]
[tiers.standard]
models = ["slow", "trickle"]
[tiers.frontier]
models = ["claude-slow", "claude-trickle"]

[router]
retries = 0
default_max_tokens = 10

{entries}"#,
        base = stub.base
    );
    let server = start_server_with(&config, POLICY);
    Setup { stub, server, keys }
}

/// A client that gives up after one second: it sends `body` to `path` with `headers`,
/// waits a second for the response, then closes the connection. `None` if nothing
/// came back in time (the point of these tests).
async fn hang_up(base: &str, path: &str, headers: &[(&str, &str)], body: &Value) -> Option<String> {
    hang_up_after(base, path, headers, body, |_| false).await
}

/// Like [`hang_up`], but closes the connection as soon as `enough` says the response
/// read so far is enough (or after a second).
async fn hang_up_after(
    base: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &Value,
    enough: impl Fn(&str) -> bool,
) -> Option<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let addr = base.strip_prefix("http://").unwrap();
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let body = body.to_string();
    let mut request = format!(
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");
    request.push_str(&body);
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut received = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(1);
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => {
                received.extend_from_slice(&buf[..n]);
                if enough(&String::from_utf8_lossy(&received)) {
                    break;
                }
            }
            Ok(_) => break,
            Err(_) => return None,
        }
    }
    Some(String::from_utf8_lossy(&received).into_owned())
}

/// Rows of `sql` once there are at least `at_least` (waiting up to 10 s).
fn rows_once(server: &TestServer, sql: &str, at_least: usize) -> Vec<Vec<Value>> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let rows = ledger_query(server, sql);
        if rows.len() >= at_least || Instant::now() > deadline {
            return rows;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn ledger_query(server: &TestServer, sql: &str) -> Vec<Vec<Value>> {
    ledger_rows_at(&server.ledger(), sql)
}

/// The one execution of `user`: its id and outcome, and its calls `(name, outcome)`.
fn execution_of(server: &TestServer, user: &str) -> (String, String, Vec<(String, String)>) {
    let rows = rows_once(server, &format!("SELECT id, outcome FROM executions WHERE user = '{user}'"), 1);
    assert_eq!(rows.len(), 1, "executions of {user}: {rows:?}");
    let id = rows[0][0].as_str().unwrap().to_string();
    let calls = crate::hostile::call_records(server, &id);
    (id, rows[0][1].as_str().unwrap().to_string(), calls)
}

/// Prints `echoed` once the sleep has been called, so a client that hangs up on
/// reading it always leaves a sleep behind to cancel.
const SLOW_CODE: &str = "console.log('started'); await tools.test.echo({n: 1}); \
                         const sleeping = tools.test.sleep({ms: 5000}); console.log('echoed'); \
                         await sleeping; return 1";

fn calls(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs.iter().map(|(a, b)| (a.to_string(), b.to_string())).collect()
}

#[tokio::test]
async fn every_call_is_recorded_whatever_the_client_does() {
    let Setup { stub, server, keys } = setup();
    let base = server.base.clone();

    // JSON: the client hangs up while the code waits on a tool. The execution is
    // cancelled and recorded with its calls.
    let bearer = |user: &str| format!("Bearer {}", keys[user]);
    let gone = hang_up(&base, "/v1/execute", &[("authorization", &bearer("json"))], &json!({"code": SLOW_CODE})).await;
    assert!(gone.is_none(), "the client should have given up: {gone:?}");
    let (_, outcome, recorded) = execution_of(&server, "json");
    assert_eq!(outcome, "cancelled");
    assert_eq!(recorded, calls(&[("tools.test.echo", "ok"), ("tools.test.sleep", "cancelled")]));

    // SSE: the client reads the console line the code prints once its first call
    // returned, then closes the stream.
    let first = hang_up_after(
        &base,
        "/v1/execute",
        &[("authorization", &bearer("sse")), ("accept", "text/event-stream")],
        &json!({"code": SLOW_CODE}),
        |read| read.contains("echoed"),
    )
    .await;
    assert!(first.as_deref().is_some_and(|r| r.contains("event: log")), "{first:?}");
    let (_, outcome, recorded) = execution_of(&server, "sse");
    assert_eq!(outcome, "cancelled");
    assert_eq!(recorded, calls(&[("tools.test.echo", "ok"), ("tools.test.sleep", "cancelled")]));

    // MCP: the client gives up on `execute` after a second; the execution is recorded
    // (it runs on in the session, which the client has not left).
    let session = mcp_session(&base, &keys["mcp"]).await;
    let call = json!({"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": {"name": "execute", "arguments": {"code": SLOW_CODE}}});
    let mcp_headers = [
        ("authorization", bearer("mcp")),
        ("accept", "application/json, text/event-stream".into()),
        ("mcp-protocol-version", "2025-11-25".into()),
        ("mcp-session-id", session.clone()),
    ];
    let mcp_headers: Vec<(&str, &str)> = mcp_headers.iter().map(|(n, v)| (*n, v.as_str())).collect();
    let gone = hang_up(&base, "/mcp", &mcp_headers, &call).await;
    assert!(gone.as_deref().is_none_or(|r| !r.contains("\"result\"")), "the MCP client should have given up: {gone:?}");
    let (_, _, recorded) = execution_of(&server, "mcp");
    assert_eq!(recorded[0], ("tools.test.echo".to_string(), "ok".to_string()), "{recorded:?}");
    assert_eq!(recorded.len(), 2, "{recorded:?}");
    // And when it cancels the request, the execution stops and is recorded as cancelled.
    let session = mcp_session(&base, &keys["mcpcancel"]).await;
    let (sent, cancel) = {
        let (base, key, session) = (base.clone(), keys["mcpcancel"].clone(), session.clone());
        let sent = tokio::spawn(async move { mcp_post(&client(), &base, &key, Some(&session), &call).await });
        (
            sent,
            json!({"jsonrpc": "2.0", "method": "notifications/cancelled", "params": {"requestId": 2, "reason": "test"}}),
        )
    };
    tokio::time::sleep(Duration::from_millis(700)).await;
    mcp_post(&client(), &base, &keys["mcpcancel"], Some(&session), &cancel).await.unwrap();
    let (_, outcome, recorded) = execution_of(&server, "mcpcancel");
    assert_eq!(outcome, "cancelled");
    assert_eq!(recorded, calls(&[("tools.test.echo", "ok"), ("tools.test.sleep", "cancelled")]));
    sent.abort();

    // The proxy: non-streaming calls whose clients hang up before the answer, and
    // streams whose clients leave after the first chunk, in both formats.
    let user = json!([{"role": "user", "content": "one two three"}]);
    for (path, model) in [("/v1/chat/completions", "slow"), ("/v1/messages", "claude-slow")] {
        let headers = [("authorization", bearer("proxy")), ("anthropic-version", "2023-06-01".into())];
        let headers: Vec<(&str, &str)> = headers.iter().map(|(n, v)| (*n, v.as_str())).collect();
        let gone = hang_up(&base, path, &headers, &json!({"model": model, "messages": user, "max_tokens": 10})).await;
        assert!(gone.is_none(), "{path}: the client should have given up: {gone:?}");
    }
    for (path, model) in [("/v1/chat/completions", "trickle"), ("/v1/messages", "claude-trickle")] {
        let headers = [("authorization", bearer("stream")), ("anthropic-version", "2023-06-01".into())];
        let headers: Vec<(&str, &str)> = headers.iter().map(|(n, v)| (*n, v.as_str())).collect();
        let body = json!({"model": model, "messages": user, "max_tokens": 10, "stream": true});
        let first = hang_up_after(&base, path, &headers, &body, |read| read.contains("data:")).await;
        assert!(first.as_deref().is_some_and(|r| r.starts_with("HTTP/1.1 200")), "{path}: {first:?}");
    }
    let proxied =
        rows_once(&server, "SELECT status, input_tokens, output_tokens FROM model_calls WHERE user = 'proxy'", 2);
    assert_eq!(
        proxied,
        vec![vec![json!("ok"), json!(3), json!(4)]; 2],
        "hung-up calls are recorded with the provider's usage"
    );
    let streamed =
        rows_once(&server, "SELECT status, input_tokens, output_tokens FROM model_calls WHERE user = 'stream'", 2);
    assert_eq!(
        streamed,
        vec![vec![json!("client_closed"), json!(3), json!(4)]; 2],
        "left streams are drained for their usage"
    );

    // model.chat cut off by the execution's wall clock: the call still completes and
    // is recorded against the execution.
    let (status, body) = post_as(
        &base,
        Some(&keys["chat"]),
        json!({"code": "return await model.chat({model: 'slow', messages: [{role: 'user', content: 'one two three'}]})", "limits": {"wall_ms": 1000}}),
    )
    .await;
    assert_eq!((status.as_u16(), &body["error"]["kind"]), (200, &json!("timeout")), "{body}");
    let chat = rows_once(
        &server,
        "SELECT execution_id, status, input_tokens, output_tokens FROM model_calls WHERE user = 'chat'",
        1,
    );
    assert_eq!(chat, vec![vec![body["execution_id"].clone(), json!("ok"), json!(3), json!(4)]]);
    let (_, _, recorded) = execution_of(&server, "chat");
    assert_eq!(recorded, calls(&[("model.chat", "cancelled")]));

    // Hanging up does not get past a budget: 24 tokens a day, 7 a call, and each call
    // reserves its input and 10 output tokens first, so a third call cannot fit.
    for made in 1..=2 {
        let body = json!({"model": "slow", "messages": user, "max_tokens": 10});
        let gone = hang_up(&base, "/v1/chat/completions", &[("authorization", &bearer("budget"))], &body).await;
        assert!(gone.is_none(), "{gone:?}");
        rows_once(&server, "SELECT id FROM model_calls WHERE user = 'budget'", made);
    }
    let refused = client()
        .post(format!("{base}/v1/chat/completions"))
        .bearer_auth(&keys["budget"])
        .json(&json!({"model": "steady", "messages": user, "max_tokens": 10}))
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 429, "{}", refused.text().await.unwrap());

    // Completed calls alongside: the invariant covers every outcome.
    let done = client()
        .post(format!("{base}/v1/chat/completions"))
        .bearer_auth(&keys["done"])
        .json(&json!({"model": "steady", "messages": user}))
        .send()
        .await
        .unwrap();
    assert_eq!(done.status(), 200);
    done.text().await.unwrap();

    // The ledger's tokens are exactly what the provider billed.
    let billed: u64 = stub.billed().values().map(|(input, output)| input + output).sum();
    let deadline = Instant::now() + Duration::from_secs(10);
    let recorded = loop {
        let rows = ledger_query(&server, "SELECT COALESCE(SUM(input_tokens + output_tokens), 0) FROM model_calls");
        let recorded = rows[0][0].as_u64().unwrap();
        if recorded == billed || Instant::now() > deadline {
            break recorded;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(recorded, billed, "ledger tokens vs billed by the provider: {:?}", stub.billed());
    assert_eq!(billed, 8 * 7, "two hung up, two streams left, one cut off, two over budget, one completed");
}

/// Opens an MCP session (protocol 2025-11-25) as `key`; returns its id.
pub async fn mcp_session(base: &str, key: &str) -> String {
    let init = json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
        "protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "test", "version": "1"}}});
    let response = mcp_post(&client(), base, key, None, &init).await.unwrap();
    assert_eq!(response.status(), 200);
    let session = response.headers()["mcp-session-id"].to_str().unwrap().to_string();
    response.text().await.unwrap();
    let initialized = json!({"jsonrpc": "2.0", "method": "notifications/initialized"});
    let response = mcp_post(&client(), base, key, Some(&session), &initialized).await.unwrap();
    assert!(response.status().is_success(), "{}", response.status());
    session
}

/// POSTs one JSON-RPC message to `/mcp`.
pub async fn mcp_post(
    client: &reqwest::Client,
    base: &str,
    key: &str,
    session: Option<&str>,
    message: &Value,
) -> reqwest::Result<reqwest::Response> {
    let mut request = client
        .post(format!("{base}/mcp"))
        .bearer_auth(key)
        .header("accept", "application/json, text/event-stream")
        .header("mcp-protocol-version", "2025-11-25")
        .json(message);
    if let Some(session) = session {
        request = request.header("mcp-session-id", session);
    }
    let response = request.send().await?;
    if message.get("id").is_some() && response.status() == 200 {
        // The answer to a request comes on the response stream; read it whole.
        let status = response.status();
        let headers = response.headers().clone();
        let body = response.bytes().await?;
        let mut rebuilt = axum::http::Response::builder().status(status);
        for (name, value) in &headers {
            rebuilt = rebuilt.header(name, value);
        }
        return Ok(reqwest::Response::from(rebuilt.body(body).unwrap()));
    }
    Ok(response)
}
