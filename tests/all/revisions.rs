//! `/mcp` for every protocol revision clients speak: 2025-06-18 (Codex, Gemini CLI),
//! 2025-11-25 (Claude Code's fallback, the Inspector), 2026-07-28 (Claude Code, the
//! Inspector's modern era). Raw HTTP, so each revision's exact bytes are checked.

use std::time::Duration;

use futures::StreamExt;
use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::harness::{api_key, client, start_server_with, ApiKey, TestServer};

const POLICY: &str = "[[policy]]\nname = \"all\"\nprincipals = [\"*\"]\n[policy.limits]\n";

fn server() -> (TestServer, String) {
    let ApiKey { token, entry } = api_key("agent", "agent", "labs", "member");
    (start_server_with(&entry, POLICY), token)
}

/// POSTs one JSON-RPC message as a client of `revision`; returns the response.
async fn post(base: &str, key: &str, revision: &str, session: Option<&str>, message: &Value) -> reqwest::Response {
    let mut request = client()
        .post(format!("{base}/mcp"))
        .bearer_auth(key)
        .header("accept", "application/json, text/event-stream")
        .json(message);
    // Gemini CLI never sends the header; the others do after `initialize`.
    if session.is_some() || revision == "2026-07-28" {
        request = request.header("mcp-protocol-version", revision);
    }
    // 2026-07-28 names the method (and a tool call's tool) in headers too (SEP-2243).
    if revision == "2026-07-28" {
        if let Some(method) = message["method"].as_str() {
            request = request.header("mcp-method", method);
        }
        if let Some(name) = message["params"]["name"].as_str() {
            request = request.header("mcp-name", name);
        }
    }
    if let Some(session) = session {
        request = request.header("mcp-session-id", session);
    }
    request.send().await.unwrap()
}

/// The SSE events of a whole body: each event's `data` (lines joined), `None` for an
/// event with no data line at all.
fn events(body: &str) -> Vec<Option<String>> {
    body.split("\n\n")
        .filter(|event| !event.trim().is_empty())
        .map(|event| {
            let data: Vec<&str> =
                event.lines().filter_map(|line| line.strip_prefix("data:")).map(|d| d.trim_start()).collect();
            (!data.is_empty()).then(|| data.join("\n"))
        })
        .collect()
}

/// Opens a session of `revision`; returns its id and the events of the answer.
async fn initialize(base: &str, key: &str, revision: &str) -> (String, Vec<Option<String>>) {
    let init = json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
        "protocolVersion": revision, "capabilities": {}, "clientInfo": {"name": "test", "version": "1"}}});
    let response = post(base, key, revision, None, &init).await;
    assert_eq!(response.status(), StatusCode::OK);
    let session = response.headers()["mcp-session-id"].to_str().unwrap().to_string();
    let events = events(&response.text().await.unwrap());
    let initialized = json!({"jsonrpc": "2.0", "method": "notifications/initialized"});
    assert!(post(base, key, revision, Some(&session), &initialized).await.status().is_success());
    (session, events)
}

/// The JSON-RPC answers among `events`, each parsed.
fn answers(events: &[Option<String>]) -> Vec<Value> {
    events.iter().flatten().filter(|d| !d.is_empty()).map(|d| serde_json::from_str(d).unwrap()).collect()
}

#[tokio::test]
async fn clients_before_2025_11_25_get_no_empty_priming_events() {
    let (server, key) = server();
    let base = &server.base;
    for (revision, primed) in [("2025-03-26", false), ("2025-06-18", false), ("2025-11-25", true)] {
        let (session, opened) = initialize(base, &key, revision).await;
        let empty = |events: &[Option<String>]| events.iter().any(|e| e.as_deref().is_some_and(str::is_empty));
        assert_eq!(empty(&opened), primed, "{revision}: {opened:?}");
        assert_eq!(answers(&opened)[0]["result"]["protocolVersion"], revision, "{opened:?}");
        // Every stream of the session, the tool call's included: each event parses.
        let call = json!({"jsonrpc": "2.0", "id": 2, "method": "tools/call",
            "params": {"name": "execute", "arguments": {"code": "console.log('hi'); return 6 * 7"}}});
        let response = post(base, &key, revision, Some(&session), &call).await;
        let called = events(&response.text().await.unwrap());
        assert_eq!(empty(&called), primed, "{revision}: {called:?}");
        let result = answers(&called).into_iter().find(|a| a["id"] == 2).expect("the call's answer");
        assert_eq!(result["result"]["structuredContent"]["result"], 42, "{result}");
    }
}

#[tokio::test]
async fn logging_set_level_is_answered_and_filters_console_lines() {
    let (server, key) = server();
    let base = &server.base;
    let (session, opened) = initialize(base, &key, "2025-11-25").await;
    assert!(answers(&opened)[0]["result"]["capabilities"]["logging"].is_object(), "{opened:?}");
    let set = |level: &str, id: u64| json!({"jsonrpc": "2.0", "id": id, "method": "logging/setLevel", "params": {"level": level}});
    let call = json!({"jsonrpc": "2.0", "id": 9, "method": "tools/call",
        "params": {"name": "execute", "arguments": {"code": "console.log('quiet'); console.warn('loud'); return 1"}}});
    // Log messages belong to no request: they come on the session's own stream.
    let stream = client()
        .get(format!("{base}/mcp"))
        .bearer_auth(&key)
        .header("accept", "text/event-stream")
        .header("mcp-protocol-version", "2025-11-25")
        .header("mcp-session-id", &session)
        .send()
        .await
        .unwrap();
    assert_eq!(stream.status(), StatusCode::OK);
    let mut stream = stream.bytes_stream();
    let mut read = String::new();
    // The console lines logged so far on the session's stream, once `count` arrived.
    let mut logged = async |count: usize| -> Vec<String> {
        loop {
            let lines: Vec<String> = answers(&events(&read))
                .into_iter()
                .filter(|a| a["method"] == "notifications/message")
                .map(|a| a["params"]["data"].as_str().unwrap().to_string())
                .collect();
            if lines.len() >= count {
                return lines;
            }
            let chunk = tokio::time::timeout(Duration::from_secs(10), stream.next()).await.expect("log lines in time");
            read.push_str(&String::from_utf8_lossy(&chunk.expect("more").unwrap()));
        }
    };
    let response = post(base, &key, "2025-11-25", Some(&session), &set("debug", 2)).await;
    let answer = answers(&events(&response.text().await.unwrap()));
    assert_eq!(answer[0]["result"], json!({}), "{answer:?}");
    post(base, &key, "2025-11-25", Some(&session), &call).await.text().await.unwrap();
    assert_eq!(logged(2).await, ["quiet", "loud"]);
    post(base, &key, "2025-11-25", Some(&session), &set("warning", 3)).await.text().await.unwrap();
    post(base, &key, "2025-11-25", Some(&session), &call).await.text().await.unwrap();
    // Only the warning of the second run follows.
    assert_eq!(logged(3).await, ["quiet", "loud", "loud"]);
}

/// The `_meta` every 2026-07-28 request carries.
fn meta() -> Value {
    json!({
        "io.modelcontextprotocol/protocolVersion": "2026-07-28",
        "io.modelcontextprotocol/clientInfo": {"name": "test", "version": "1"},
        "io.modelcontextprotocol/clientCapabilities": {},
    })
}

#[tokio::test]
async fn stateless_clients_discover_list_call_and_listen() {
    let (server, key) = server();
    let base = &server.base;
    let discover = json!({"jsonrpc": "2.0", "id": "d", "method": "server/discover", "params": {"_meta": meta()}});
    let response = post(base, &key, "2026-07-28", None, &discover).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert!(response.headers().get("mcp-session-id").is_none(), "2026-07-28 has no sessions");
    let found = answers(&events_or_json(response).await);
    assert!(found[0]["result"]["supportedVersions"].to_string().contains("2026-07-28"), "{found:?}");

    let list = json!({"jsonrpc": "2.0", "id": 2, "method": "tools/list", "params": {"_meta": meta()}});
    let listed = answers(&events_or_json(post(base, &key, "2026-07-28", None, &list).await).await);
    let names: Vec<&str> =
        listed[0]["result"]["tools"].as_array().unwrap().iter().filter_map(|t| t["name"].as_str()).collect();
    assert_eq!(names, ["search", "execute"], "{listed:?}");

    let call = json!({"jsonrpc": "2.0", "id": 3, "method": "tools/call", "params": {"_meta": meta(),
        "name": "execute", "arguments": {"code": "return 6 * 7"}}});
    let called = answers(&events_or_json(post(base, &key, "2026-07-28", None, &call).await).await);
    let result = called.iter().find(|a| a["id"] == 3).expect("the call's answer");
    assert_eq!(result["result"]["structuredContent"]["result"], 42, "{result}");

    // `subscriptions/listen`: acknowledged first, then the stream stays open.
    let listen = json!({"jsonrpc": "2.0", "id": "listen:0", "method": "subscriptions/listen", "params": {
        "_meta": meta(), "notifications": {"toolsListChanged": true, "promptsListChanged": true, "resourcesListChanged": true}}});
    let mut streams = Vec::new();
    for _ in 0..8 {
        let response = post(base, &key, "2026-07-28", None, &listen).await;
        assert_eq!(response.status(), StatusCode::OK);
        assert!(response.headers()["content-type"].to_str().unwrap().starts_with("text/event-stream"));
        let mut body = response.bytes_stream();
        let mut read = String::new();
        let first = loop {
            let chunk = tokio::time::timeout(Duration::from_secs(10), body.next()).await.expect("an event in time");
            read.push_str(&String::from_utf8_lossy(&chunk.expect("more").unwrap()));
            if let Some(answer) = answers(&events(&read)).into_iter().next() {
                break answer;
            }
        };
        assert_eq!(first["method"], "notifications/subscriptions/acknowledged", "{first}");
        assert_eq!(first["params"]["notifications"], json!({"toolsListChanged": true}), "{first}");
        assert_eq!(first["params"]["_meta"]["io.modelcontextprotocol/subscriptionId"], "listen:0", "{first}");
        // Still open: nothing more arrives, and the stream has not ended.
        assert!(tokio::time::timeout(Duration::from_millis(300), body.next()).await.is_err());
        streams.push(body);
    }
    // One caller holds a few such streams at most.
    let refused = answers(&events_or_json(post(base, &key, "2026-07-28", None, &listen).await).await);
    let error = refused.iter().find(|a| a["id"] == "listen:0").expect("an answer");
    assert_eq!(error["error"]["data"]["kind"], "rate_limited", "{refused:?}");
    drop(streams);
}

/// The events of a response, whether it came as SSE or as one JSON body.
async fn events_or_json(response: reqwest::Response) -> Vec<Option<String>> {
    let sse = response.headers()["content-type"].to_str().unwrap().starts_with("text/event-stream");
    let body = response.text().await.unwrap();
    if sse {
        events(&body)
    } else {
        vec![Some(body)]
    }
}
