//! Executions in the background, against the real binary: `POST /v1/executions`
//! answers at once, `GET` gives the status and then the result, `/events` streams the
//! console and the result, `DELETE` cancels (recorded like any other), results expire,
//! a background run has its own wall-clock ceiling; across two replicas on
//! PostgreSQL; and over MCP as tasks (rmcp's client, which speaks the tasks extension).

use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

use crate::binary::{served_dir, terminate, Running};
use crate::harness::{api_key, call, client, ApiKey};

const POLICY: &str = r#"[[policy]]
name = "all"
principals = ["*"]
[policy.limits]
wall_ms = 1000
background_wall_ms = 8000
[policy.tools]
allow = ["test.*"]
[policy.sessions]
"#;

struct Served {
    _server: Running,
    base: String,
    alice: String,
    bob: String,
}

/// The real binary with `tools.test`, results kept `ttl_s`, keys for alice and bob;
/// `store` is extra configuration (a shared store).
fn config(label: &str, ttl_s: u64) -> (std::path::PathBuf, String, String) {
    let dir = served_dir(label);
    std::fs::write(dir.join("policies/all.toml"), POLICY).unwrap();
    let ApiKey { token: alice, entry: a } = api_key("alice", "alice", "labs", "member");
    let ApiKey { token: bob, entry: b } = api_key("bob", "bob", "labs", "member");
    let config = dir.join("sandgate.toml");
    std::fs::write(
        &config,
        format!("policies = \"policies\"\n[ledger]\npath = \"ledger.db\"\n[sandbox]\ntest_capability = true\nresult_ttl_s = {ttl_s}\n{a}{b}"),
    )
    .unwrap();
    (config, alice, bob)
}

fn start(label: &str, ttl_s: u64) -> Served {
    let (config, alice, bob) = config(label, ttl_s);
    let server = Running::serve(&["--config", config.to_str().unwrap()]);
    Served { base: server.base.clone(), _server: server, alice, bob }
}

async fn start_run(base: &str, key: &str, body: Value) -> String {
    let (status, view) = call(Method::POST, format!("{base}/v1/executions"), key, Some(body)).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{view}");
    assert_eq!(view["status"], "running", "{view}");
    view["execution_id"].as_str().unwrap().to_string()
}

/// Polls until the execution has ended.
async fn ended(base: &str, key: &str, id: &str) -> Value {
    for _ in 0..200 {
        let (status, view) = call(Method::GET, format!("{base}/v1/executions/{id}"), key, None).await;
        assert_eq!(status, StatusCode::OK, "{view}");
        if view["status"] != "running" {
            return view;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("execution {id} did not end");
}

/// The events of `/v1/executions/{id}/events`, as (event, data) pairs.
async fn events(base: &str, key: &str, id: &str) -> Vec<(String, Value)> {
    let text = client()
        .get(format!("{base}/v1/executions/{id}/events"))
        .bearer_auth(key)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let mut events = Vec::new();
    for block in text.split("\n\n") {
        let mut name = String::new();
        let mut data = String::new();
        for line in block.lines() {
            if let Some(value) = line.strip_prefix("event:") {
                name = value.trim().to_string();
            } else if let Some(value) = line.strip_prefix("data:") {
                data.push_str(value.trim_start());
            }
        }
        if !name.is_empty() {
            events.push((name, serde_json::from_str(&data).unwrap_or(Value::Null)));
        }
    }
    events
}

const SLOW: &str = "console.log('first'); await tools.test.sleep({ms: 1500}); console.log('second'); return 42";

#[tokio::test]
async fn a_background_execution_answers_at_once_and_keeps_its_result() {
    let served = start("handles", 3);
    let (base, alice, bob) = (served.base.as_str(), served.alice.as_str(), served.bob.as_str());

    // Past the ordinary wall clock (1 s) it times out; in the background (8 s) it runs.
    let (_, body) = call(Method::POST, format!("{base}/v1/execute"), alice, Some(json!({"code": SLOW}))).await;
    assert_eq!(body["error"]["kind"], "timeout", "{body}");
    let started = std::time::Instant::now();
    let id = start_run(base, alice, json!({"code": SLOW})).await;
    assert!(started.elapsed() < Duration::from_millis(1000), "the handle comes back before the run ends");

    // The stream gives the console as it comes, then the result.
    let streamed = events(base, alice, &id).await;
    let names: Vec<&str> = streamed.iter().map(|(name, _)| name.as_str()).collect();
    assert_eq!(names, ["log", "log", "result"], "{streamed:?}");
    assert_eq!(streamed[0].1["message"], "first");
    assert_eq!(streamed[1].1["message"], "second");
    assert_eq!(streamed[2].1["result"], 42);
    let view = ended(base, alice, &id).await;
    assert_eq!((view["status"].clone(), view["result"]["result"].clone()), (json!("succeeded"), json!(42)), "{view}");
    assert_eq!(view["result"]["execution_id"], id.as_str(), "the handle is the ledger's execution id");
    // A stream opened after the end gives the same.
    let replay = events(base, alice, &id).await;
    assert_eq!(replay.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>(), ["log", "log", "result"]);

    // Its own ceiling still applies.
    let (status, body) = call(
        Method::POST,
        format!("{base}/v1/executions"),
        alice,
        Some(json!({"code": "1", "limits": {"wall_ms": 9000}})),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    let id_timeout =
        start_run(base, alice, json!({"code": "await tools.test.sleep({ms: 60000})", "limits": {"wall_ms": 1500}}))
            .await;
    let view = ended(base, alice, &id_timeout).await;
    assert_eq!((view["status"].clone(), view["result"]["error"]["kind"].clone()), (json!("failed"), json!("timeout")));

    // DELETE cancels; the cancelled run is recorded like any other.
    let id_cancel = start_run(base, alice, json!({"code": "await tools.test.sleep({ms: 60000}); 1"})).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (status, _) = call(Method::DELETE, format!("{base}/v1/executions/{id_cancel}"), bob, None).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "only its owner cancels it");
    let (status, _) = call(Method::DELETE, format!("{base}/v1/executions/{id_cancel}"), alice, None).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    let view = ended(base, alice, &id_cancel).await;
    assert_eq!(
        (view["status"].clone(), view["result"]["error"]["kind"].clone()),
        (json!("cancelled"), json!("cancelled"))
    );
    let (status, _) = call(Method::DELETE, format!("{base}/v1/executions/{id_cancel}"), alice, None).await;
    assert_eq!(status, StatusCode::OK, "an ended execution stays as it ended");
    let (_, usage) = call(Method::GET, format!("{base}/v1/usage"), alice, None).await;
    assert_eq!(
        usage["totals"]["executions"], 4,
        "the timeout, the run, the timed-out run and the cancelled one: {usage}"
    );

    // Nobody else sees it.
    for path in [format!("/v1/executions/{id}"), format!("/v1/executions/{id}/events")] {
        let (status, _) = call(Method::GET, format!("{base}{path}"), bob, None).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{path}");
    }

    // In a session, a background run moves the session on like any other.
    let (_, session) = call(Method::POST, format!("{base}/v1/sessions"), alice, Some(json!({}))).await;
    let session = session["session_id"].as_str().unwrap().to_string();
    let id_session = start_run(
        base,
        alice,
        json!({"session_id": session, "code": "await tools.test.sleep({ms: 1200}); let made = 'in the background'"}),
    )
    .await;
    assert_eq!(ended(base, alice, &id_session).await["status"], "succeeded");
    let (_, body) =
        call(Method::POST, format!("{base}/v1/execute"), alice, Some(json!({"session_id": session, "code": "made"})))
            .await;
    assert_eq!(body["result"], "in the background", "{body}");

    // Results are kept for the TTL (3 s here), then forgotten.
    tokio::time::sleep(Duration::from_millis(3500)).await;
    let (status, _) = call(Method::GET, format!("{base}/v1/executions/{id}"), alice, None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

/// Two real replicas on one PostgreSQL: a run started on one is read, followed and
/// cancelled on the other.
#[tokio::test]
async fn any_replica_answers_for_a_background_execution() {
    let url = crate::postgres::database().await;
    let (config, alice, _) = config("handles-replicas", 600);
    let replica = |config: &std::path::Path| {
        let mut command = crate::binary::sandgate();
        command.env("SANDGATE_STORE_URL", &url).args(["serve", "--listen", "127.0.0.1:0", "--config"]).arg(config);
        crate::binary::start(command)
    };
    let (mut one, one_base) = replica(&config);
    let (mut two, two_base) = replica(&config);

    let id = start_run(&one_base, &alice, json!({"code": SLOW})).await;
    let (status, view) = call(Method::GET, format!("{two_base}/v1/executions/{id}"), &alice, None).await;
    assert_eq!((status, view["status"].clone()), (StatusCode::OK, json!("running")), "{view}");
    let followed = events(&two_base, &alice, &id).await;
    let names: Vec<&str> = followed.iter().map(|(name, _)| name.as_str()).collect();
    assert_eq!(names, ["log", "log", "result"], "another replica gives the lines with the result: {followed:?}");
    assert_eq!(followed[2].1["result"], 42);

    let id = start_run(&one_base, &alice, json!({"code": "await tools.test.sleep({ms: 60000}); 1"})).await;
    let (status, _) = call(Method::DELETE, format!("{two_base}/v1/executions/{id}"), &alice, None).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    let started = std::time::Instant::now();
    let view = ended(&two_base, &alice, &id).await;
    assert_eq!(view["status"], "cancelled", "{view}");
    assert!(started.elapsed() < Duration::from_secs(5), "the running replica saw the cancel");
    for child in [&mut one, &mut two] {
        terminate(child);
        child.wait().unwrap();
    }
}

/// A client with rmcp's tasks extension: `execute` of a long run answers with a
/// task; `tasks/get` gives its status and then the tool result; `tasks/cancel` stops
/// one. A short run still answers at once.
#[tokio::test]
async fn mcp_clients_with_tasks_poll_long_executions() {
    use rmcp::model::{
        CallToolRequestParams, CallToolResponse, CancelTaskParams, ClientCapabilities, ClientConfig, GetTaskParams,
        Implementation, TaskPayload, TaskStatus,
    };
    use rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig;
    use rmcp::transport::StreamableHttpClientTransport;
    use rmcp::ServiceExt;

    let served = start("handles-mcp", 600);
    let transport = StreamableHttpClientTransport::from_config(
        StreamableHttpClientTransportConfig::with_uri(format!("{}/mcp", served.base)).auth_header(served.alice.clone()),
    );
    let info =
        ClientConfig::new(ClientCapabilities::builder().enable_tasks().build(), Implementation::new("test", "1"));
    let client = info.serve(transport).await.expect("the client connects");
    let execute = |code: &str| {
        let arguments = json!({"code": code, "language": "javascript"}).as_object().cloned().unwrap();
        CallToolRequestParams::new("execute").with_arguments(arguments)
    };

    let quick = client.call_tool_once(execute("return 6 * 7")).await.unwrap();
    let CallToolResponse::Complete(result) = quick else { panic!("a short run answers at once: {quick:?}") };
    assert_eq!(result.structured_content.unwrap()["result"], 42);

    let started = std::time::Instant::now();
    let long = client.call_tool_once(execute(SLOW)).await.unwrap();
    let CallToolResponse::Task(task) = long else { panic!("a long run is a task: {long:?}") };
    assert!(started.elapsed() < Duration::from_millis(1400));
    assert_eq!(task.task.status, TaskStatus::Working);
    let id = task.task.task_id.clone();
    let done = loop {
        let got = client.get_task(GetTaskParams::new(id.clone())).await.unwrap();
        if got.task.status() != TaskStatus::Working {
            break got;
        }
        tokio::time::sleep(Duration::from_millis(got.task.task.poll_interval_ms.unwrap_or(200))).await;
    };
    let TaskPayload::Completed { result } = done.task.payload else { panic!("{done:?}") };
    assert_eq!(result["structuredContent"]["result"], 42, "{result:?}");
    assert_eq!(result["isError"], false, "{result:?}");
    let console = result["content"].to_string();
    assert!(console.contains("first") && console.contains("second"), "{console}");

    let long = client.call_tool_once(execute("await tools.test.sleep({ms: 60000}); 1")).await.unwrap();
    let CallToolResponse::Task(task) = long else { panic!("{long:?}") };
    client.cancel_task(CancelTaskParams::new(task.task.task_id.clone())).await.unwrap();
    let mut status = TaskStatus::Working;
    for _ in 0..50 {
        status = client.get_task(GetTaskParams::new(task.task.task_id.clone())).await.unwrap().task.status();
        if status != TaskStatus::Working {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(status, TaskStatus::Cancelled);

    // Another principal's task is unknown to them.
    let transport = StreamableHttpClientTransport::from_config(
        StreamableHttpClientTransportConfig::with_uri(format!("{}/mcp", served.base)).auth_header(served.bob.clone()),
    );
    let info =
        ClientConfig::new(ClientCapabilities::builder().enable_tasks().build(), Implementation::new("test", "1"));
    let bob = info.serve(transport).await.expect("bob connects");
    assert!(bob.get_task(GetTaskParams::new(id.clone())).await.is_err());
    assert!(bob.cancel_task(CancelTaskParams::new(id)).await.is_err());
    bob.cancel().await.unwrap();
    client.cancel().await.unwrap();
}

/// A server shut down while a background execution runs records how it ended (it is
/// cancelled when the grace period is over), so no handle stays `running` forever.
#[tokio::test]
async fn a_shutdown_records_the_end_of_background_executions() {
    let (config, alice, _) = config("handles-shutdown", 600);
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(&config, format!("{text}\n[http]\nshutdown_grace_ms = 500\n")).unwrap();
    let mut server = Running::serve(&["--config", config.to_str().unwrap()]);
    let id = start_run(&server.base, &alice, json!({"code": "await tools.test.sleep({ms: 60000}); 1"})).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    server.stop();
    let server = Running::serve(&["--config", config.to_str().unwrap()]);
    let (status, view) = call(Method::GET, format!("{}/v1/executions/{id}", server.base), &alice, None).await;
    assert_eq!(status, StatusCode::OK, "{view}");
    assert_eq!(view["status"], "cancelled", "{view}");
    assert_eq!(view["result"]["error"]["kind"], "cancelled", "{view}");
}
