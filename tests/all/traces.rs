//! OpenTelemetry traces from the real binary to a real OTLP/HTTP receiver
//! (`tests/python/otlp_receiver.py`, which decodes the protobuf with the official
//! `opentelemetry-proto` package): the span tree of one execution that called two
//! MCP tools and a model, under the caller's own trace; the trace context passed on
//! to the MCP server (`_meta.traceparent`) and the model provider (`traceparent`);
//! and a proxy request whose first model fails and falls back.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::binary::{sandgate, start, terminate};
use crate::harness::*;
use crate::stub::Stub;

/// The receiver process and the spans it printed.
struct Receiver {
    child: Child,
    port: u16,
    spans: Arc<Mutex<Vec<Value>>>,
}

impl Receiver {
    fn start() -> Receiver {
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/python/otlp_receiver.py");
        let mut child = Command::new("python3")
            .arg(script)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("python3 runs the OTLP receiver");
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let first = lines.next().expect("the receiver's first line").unwrap();
        let port = first.strip_prefix("listening ").and_then(|p| p.parse().ok()).expect("`listening PORT`");
        let spans = Arc::new(Mutex::new(Vec::new()));
        let sink = spans.clone();
        std::thread::spawn(move || {
            for line in lines.map_while(Result::ok) {
                sink.lock().unwrap().push(serde_json::from_str::<Value>(&line).expect("a span as JSON"));
            }
        });
        Receiver { child, port, spans }
    }

    /// The spans received so far, once `done` holds of them (or after 20 s).
    fn wait_for(&self, done: impl Fn(&[Value]) -> bool) -> Vec<Value> {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let spans = self.spans.lock().unwrap().clone();
            if done(&spans) || Instant::now() > deadline {
                return spans;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Each call's tool name and the `_meta.traceparent` it came with.
type Calls = Arc<Mutex<Vec<(String, Option<String>)>>>;

/// An MCP server (rmcp, streamable HTTP, in this process) with `lookup` and `store`,
/// which records the `_meta.traceparent` of every call.
#[derive(Clone, Default)]
struct Recorder {
    traceparents: Calls,
}

impl rmcp::ServerHandler for Recorder {
    fn get_info(&self) -> rmcp::model::ServerConfig {
        rmcp::model::ServerConfig::new(rmcp::model::ServerCapabilities::builder().enable_tools().build())
    }

    async fn list_tools(
        &self,
        _request: Option<rmcp::model::PaginatedRequestParams>,
        _context: rmcp::service::RequestContext<rmcp::RoleServer>,
    ) -> Result<rmcp::model::ListToolsResult, rmcp::ErrorData> {
        let tool = |name: &str| {
            let Value::Object(schema) = json!({ "type": "object" }) else { unreachable!() };
            rmcp::model::Tool::new(name.to_string(), format!("The {name} tool"), Arc::new(schema))
        };
        Ok(rmcp::model::ListToolsResult::with_all_items(vec![tool("lookup"), tool("store")]))
    }

    async fn call_tool(
        &self,
        request: rmcp::model::CallToolRequestParams,
        context: rmcp::service::RequestContext<rmcp::RoleServer>,
    ) -> Result<rmcp::model::CallToolResponse, rmcp::ErrorData> {
        use rmcp::model::RequestParamsMeta;
        let traceparent =
            request.traceparent().map(str::to_string).or_else(|| context.meta.get_traceparent().map(str::to_string));
        self.traceparents.lock().unwrap().push((request.name.to_string(), traceparent));
        let text = format!("{} done", request.name);
        Ok(rmcp::model::CallToolResult::success(vec![rmcp::model::ContentBlock::text(text)]).into())
    }
}

fn attribute<'a>(span: &'a Value, key: &str) -> &'a Value {
    &span["attributes"][key]
}

/// The spans of `trace_id` as an indented tree, one span a line.
fn tree(spans: &[Value], trace_id: &str) -> String {
    let mut children: BTreeMap<String, Vec<&Value>> = BTreeMap::new();
    let ids: Vec<&str> = spans.iter().map(|s| s["span_id"].as_str().unwrap()).collect();
    for span in spans.iter().filter(|s| s["trace_id"] == trace_id) {
        let parent = span["parent_span_id"].as_str().unwrap();
        let key = if ids.contains(&parent) { parent.to_string() } else { String::new() };
        children.entry(key).or_default().push(span);
    }
    fn walk(children: &BTreeMap<String, Vec<&Value>>, at: &str, depth: usize, out: &mut String) {
        let mut here = children.get(at).cloned().unwrap_or_default();
        here.sort_by_key(|s| (s["start"].as_u64(), s["name"].as_str().map(str::to_string)));
        for span in here {
            let status = if span["status"] == 2 { " [error]" } else { "" };
            out.push_str(&format!("{}{}{status}\n", "  ".repeat(depth), span["name"].as_str().unwrap()));
            walk(children, span["span_id"].as_str().unwrap(), depth + 1, out);
        }
    }
    let mut out = String::new();
    walk(&children, "", 0, &mut out);
    out
}

#[tokio::test]
async fn an_execution_is_one_trace_with_its_tool_and_model_calls() {
    use rmcp::transport::streamable_http_server::session::local::LocalSessionManager;
    use rmcp::transport::{StreamableHttpServerConfig, StreamableHttpService};

    let receiver = Receiver::start();
    let stub = Stub::start();
    let recorder = Recorder::default();
    let upstream = StreamableHttpService::new(
        {
            let recorder = recorder.clone();
            move || Ok(recorder.clone())
        },
        Arc::new(LocalSessionManager::default()),
        StreamableHttpServerConfig::default(),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let mcp_url = format!("http://{}/mcp", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, axum::Router::new().route_service("/mcp", upstream)).await });

    let dir = temp_dir("traces");
    std::fs::create_dir_all(dir.join("policies")).unwrap();
    std::fs::write(
        dir.join("policies/all.toml"),
        "[[policy]]\nname = \"everyone\"\nprincipals = [\"*\"]\n[policy.limits]\n[policy.tools]\nallow = [\"recorder.*\"]\n\
         [policy.models]\ntiers = [\"economy\"]\n",
    )
    .unwrap();
    let config = dir.join("sandgate.toml");
    std::fs::write(
        &config,
        format!(
            r#"policies = "policies"
[mcp.servers.recorder]
url = "{mcp_url}"

{}
[tiers.economy]
models = ["cheap-broken", "cheap"]
"#,
            stub.openai_config(
                "SANDGATE_TRACES_PROVIDER_KEY",
                &[("cheap-broken", "gpt-cheap-500", "economy"), ("cheap", "gpt-cheap-ok", "economy")]
            )
        ),
    )
    .unwrap();
    let mut command = sandgate();
    command
        .env("SANDGATE_TRACES_PROVIDER_KEY", "sk-stub-test")
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", format!("http://127.0.0.1:{}", receiver.port))
        .env("OTEL_SERVICE_NAME", "sandgate-under-test")
        .args(["serve", "--listen", "127.0.0.1:0", "--config"])
        .arg(&config);
    let (mut child, base) = start(command);
    let tools_ready = {
        let base = base.clone();
        tokio::task::spawn_blocking(move || {
            crate::mcp::wait_for_tools(&base, "", &["recorder.lookup", "recorder.store"])
        })
    };
    tools_ready.await.unwrap();

    // One execution, inside the caller's own trace: two tools at once, then a model.
    let (trace_id, caller_span) = ("4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7");
    let response = client()
        .post(format!("{base}/v1/execute"))
        .header("traceparent", format!("00-{trace_id}-{caller_span}-01"))
        .json(&json!({ "code": "const [a, b] = await Promise.all([tools.recorder.lookup({ q: 'x' }), \
                                 tools.recorder.store({ v: 1 })]);\n\
                                 const answer = await model.chat({ model: 'cheap', messages: [{ role: 'user', content: 'hello there' }] });\n\
                                 return [a, b, answer.model];" }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["result"], json!(["lookup done", "store done", "cheap"]), "{body}");
    let execution_id = body["execution_id"].as_str().unwrap().to_string();

    // Code Mode over MCP: the trace context comes in `_meta.traceparent` (SEP-414).
    let mcp_trace = "0af7651916cd43dd8448eb211c80319c";
    let transport = rmcp::transport::StreamableHttpClientTransport::from_uri(format!("{base}/mcp"));
    let client = rmcp::ServiceExt::serve(rmcp::model::ClientConfig::default(), transport).await.unwrap();
    let Value::Object(arguments) = json!({ "code": "return await tools.recorder.lookup({ q: 'mcp' })" }) else {
        unreachable!()
    };
    let mut request = rmcp::model::CallToolRequestParams::new("execute").with_arguments(arguments);
    rmcp::model::RequestParamsMeta::set_traceparent(&mut request, &format!("00-{mcp_trace}-b7ad6b7169203331-01"));
    let result = client.peer().call_tool(request).await.unwrap();
    assert_ne!(result.is_error, Some(true), "{result:?}");
    drop(client);

    // A proxy request whose first model answers 500: both attempts are spans.
    let (status, answer) = call(
        reqwest::Method::POST,
        format!("{base}/v1/chat/completions"),
        "",
        Some(json!({ "model": "tier:economy", "messages": [{ "role": "user", "content": "hi" }] })),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{answer}");

    // Shutdown exports what is buffered.
    terminate(&child);
    child.wait().unwrap();
    let spans = receiver.wait_for(|spans| {
        spans.iter().any(|s| s["name"] == "execute javascript")
            && spans.iter().any(|s| s["name"] == "execute typescript")
            && spans.iter().filter(|s| s["name"].as_str().is_some_and(|n| n.starts_with("chat "))).count() >= 3
    });
    let shown = tree(&spans, trace_id);
    println!("the execution's trace:\n{shown}");

    let execution = spans.iter().find(|s| s["name"] == "execute javascript").expect("an execution span");
    assert_eq!(execution["trace_id"], trace_id, "the execution joins the caller's trace");
    assert_eq!(execution["parent_span_id"], caller_span, "under the caller's span");
    assert_eq!(execution["service"], "sandgate-under-test");
    assert_eq!(execution["kind"], 2, "a server span");
    assert_eq!(attribute(execution, "sandgate.execution_id"), &json!(execution_id));
    assert_eq!(attribute(execution, "sandgate.outcome"), "ok");
    assert_eq!(attribute(execution, "user.id"), "local");
    let execution_span = execution["span_id"].as_str().unwrap();

    let children: Vec<&Value> = spans.iter().filter(|s| s["parent_span_id"] == execution_span).collect();
    let mut names: Vec<&str> = children.iter().map(|s| s["name"].as_str().unwrap()).collect();
    names.sort();
    assert_eq!(names, ["chat gpt-cheap-ok", "execute_tool recorder.lookup", "execute_tool recorder.store"], "{shown}");
    for tool in children.iter().filter(|s| s["name"].as_str().unwrap().starts_with("execute_tool")) {
        assert_eq!(tool["kind"], 3, "a client span");
        assert_eq!(attribute(tool, "gen_ai.operation.name"), "execute_tool");
        assert_eq!(attribute(tool, "mcp.method.name"), "tools/call");
        assert_eq!(attribute(tool, "user.id"), "local");
        let name = attribute(tool, "gen_ai.tool.name").as_str().unwrap();
        // The tool received this span's context.
        let sent = recorder.traceparents.lock().unwrap().clone();
        let upstream_name = name.strip_prefix("recorder.").unwrap();
        let (_, traceparent) = sent.iter().find(|(n, _)| n == upstream_name).expect("the tool was called");
        let expected = format!("00-{trace_id}-{}-01", tool["span_id"].as_str().unwrap());
        assert_eq!(traceparent.as_deref(), Some(expected.as_str()), "`_meta.traceparent` of {name}");
    }
    let chat = children.iter().find(|s| s["name"] == "chat gpt-cheap-ok").unwrap();
    assert_eq!(chat["kind"], 3);
    assert_eq!(attribute(chat, "gen_ai.operation.name"), "chat");
    assert_eq!(attribute(chat, "gen_ai.provider.name"), "openai");
    assert_eq!(attribute(chat, "gen_ai.request.model"), "gpt-cheap-ok");
    assert_eq!(attribute(chat, "gen_ai.response.model"), "gpt-cheap-ok");
    assert_eq!(attribute(chat, "sandgate.model"), "cheap");
    assert_eq!(attribute(chat, "sandgate.tier"), "economy");
    assert!(attribute(chat, "gen_ai.usage.input_tokens").as_i64().unwrap() > 0, "{chat}");
    assert!(attribute(chat, "gen_ai.usage.output_tokens").as_i64().unwrap() > 0, "{chat}");
    assert!(attribute(chat, "sandgate.cost_usd").as_f64().unwrap() > 0.0, "{chat}");
    assert_eq!(attribute(chat, "sandgate.execution_id"), &json!(execution_id));
    // The provider received the chat span's context.
    let requests = stub.requests();
    let sent = requests.iter().find(|r| r.body["messages"][0]["content"] == "hello there").unwrap();
    let expected = format!("00-{trace_id}-{}-01", chat["span_id"].as_str().unwrap());
    assert_eq!(sent.traceparent.as_deref(), Some(expected.as_str()));

    // The MCP `execute`: its execution and tool call are in the MCP client's trace.
    println!("the MCP request's trace:\n{}", tree(&spans, mcp_trace));
    let over_mcp = spans
        .iter()
        .find(|s| s["trace_id"] == mcp_trace && s["name"] == "execute typescript")
        .expect("the execution in the MCP client's trace");
    assert_eq!(over_mcp["parent_span_id"], "b7ad6b7169203331");
    assert!(spans.iter().any(|s| s["trace_id"] == mcp_trace
        && s["parent_span_id"] == over_mcp["span_id"]
        && s["name"] == "execute_tool recorder.lookup"));

    // The proxy request: a server span with one chat span per attempt, the failed one
    // first and marked as an error, the one that answered naming it as a fallback.
    let route = spans.iter().find(|s| s["name"] == "POST /v1/chat/completions").expect("a proxy span");
    assert_eq!(attribute(route, "http.response.status_code"), 200);
    assert_eq!(attribute(route, "sandgate.model"), "cheap");
    let mut attempts: Vec<&Value> = spans.iter().filter(|s| s["parent_span_id"] == route["span_id"]).collect();
    attempts.sort_by_key(|s| s["start"].as_u64());
    println!("the proxy request's trace:\n{}", tree(&spans, route["trace_id"].as_str().unwrap()));
    assert!(attempts.len() >= 2, "{attempts:?}");
    let (failed, answered) = (attempts[0], attempts[attempts.len() - 1]);
    assert_eq!(failed["name"], "chat gpt-cheap-500");
    assert_eq!(failed["status"], 2, "an error status");
    assert_eq!(attribute(failed, "error.type"), "upstream_error");
    assert_eq!(answered["name"], "chat gpt-cheap-ok");
    assert_eq!(answered["status"], 0);
    let fallbacks = attribute(answered, "sandgate.fallbacks").as_array().expect("the earlier attempts");
    assert!(fallbacks.iter().any(|f| f.as_str().unwrap().starts_with("cheap-broken: HTTP 500")), "{answered}");
}
