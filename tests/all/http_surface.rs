//! Bad input, streaming, health and metrics over HTTP.

use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::harness::*;

async fn raw_post(body: &'static str) -> (StatusCode, Value) {
    let response = client()
        .post(format!("{}/v1/execute", base()))
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap();
    let status = response.status();
    (status, response.json().await.unwrap())
}

#[tokio::test]
async fn bad_requests_get_typed_errors() {
    let cases: [(&str, u16, &str); 8] = [
        ("{not json", 400, "invalid request body"),
        ("{\"code\": 5}", 400, "invalid type"),
        ("{}", 400, "missing field `code`"),
        ("{\"code\": \"1\", \"colour\": 1}", 400, "unknown field `colour`"),
        ("{\"code\": \"   \"}", 400, "empty"),
        ("{\"code\": \"1\", \"limits\": {\"wall_ms\": 99999999}}", 400, "ceiling"),
        ("{\"code\": \"1\", \"limits\": {\"fuel\": -1}}", 400, "invalid value"),
        ("[1, 2]", 400, "invalid"),
    ];
    for (body, status, needle) in cases {
        let (got, reply) = raw_post(body).await;
        assert_eq!(got.as_u16(), status, "{body}: {reply}");
        assert_eq!(reply["error"]["kind"], "invalid_request", "{body}: {reply}");
        assert!(reply["error"]["message"].as_str().unwrap().contains(needle), "{body}: {reply}");
    }
}

#[tokio::test]
async fn oversized_code_is_413() {
    let code = format!("return '{}'", "x".repeat(300 << 10));
    let (status, reply) = post_to(base(), json!({"code": code})).await;
    assert_eq!(status, 413, "{reply}");
    assert_eq!(reply["error"]["kind"], "invalid_request");
    let (status, reply) = post_to(base(), json!({"code": "return 1 + 1", "limits": {"code_bytes": 5}})).await;
    assert_eq!(status, 413, "{reply}");

    // A declared length over the body cap is refused before the body is read.
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let addr = base().strip_prefix("http://").unwrap();
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let head = "POST /v1/execute HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: 20971520\r\nConnection: close\r\n\r\n{\"code\": \"";
    stream.write_all(head.as_bytes()).await.unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    assert!(response.starts_with("HTTP/1.1 413"), "{response}");
    let body = response.split("\r\n\r\n").nth(1).unwrap();
    let reply: Value = serde_json::from_str(body).unwrap();
    assert_eq!(reply["error"]["kind"], "invalid_request");
}

#[tokio::test]
async fn unknown_routes_are_json_404s() {
    let response = client().get(format!("{}/v1/nothing", base())).send().await.unwrap();
    assert_eq!(response.status(), 404);
    let reply: Value = response.json().await.unwrap();
    assert_eq!(reply["error"]["kind"], "invalid_request");
}

#[tokio::test]
async fn event_stream_sends_log_lines_then_the_result() {
    let response = client()
        .post(format!("{}/v1/execute", base()))
        .header("accept", "text/event-stream")
        .json(&json!({"code": "console.log('one'); await tools.test.sleep({ms: 50}); console.warn('two'); return 3"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert!(response.headers()["content-type"].to_str().unwrap().starts_with("text/event-stream"));
    let text = response.text().await.unwrap();
    let events: Vec<(String, Value)> = text
        .split("\n\n")
        .filter_map(|block| {
            let event = block.lines().find_map(|l| l.strip_prefix("event: "))?;
            let data = block.lines().find_map(|l| l.strip_prefix("data: "))?;
            Some((event.to_string(), serde_json::from_str(data).unwrap()))
        })
        .collect();
    let names: Vec<&str> = events.iter().map(|(e, _)| e.as_str()).collect();
    assert_eq!(names, ["log", "log", "result"], "{text}");
    assert_eq!(events[0].1, json!({"level": "log", "message": "one"}));
    assert_eq!(events[1].1, json!({"level": "warn", "message": "two"}));
    assert_eq!(events[2].1["result"], 3);
    assert_eq!(events[2].1["logs"].as_array().unwrap().len(), 2);
}

#[tokio::test]
async fn health_and_metrics() {
    let health: Value = client().get(format!("{}/healthz", base())).send().await.unwrap().json().await.unwrap();
    assert_eq!(health["status"], "ok");
    result_of("return 1").await;
    let _ = error_of("while(true){}", json!({"fuel": 1000})).await;
    let metrics = client().get(format!("{}/metrics", base())).send().await.unwrap().text().await.unwrap();
    assert!(metrics.contains("sandgate_executions_total{outcome=\"ok\"}"), "{metrics}");
    assert!(metrics.contains("sandgate_executions_total{outcome=\"out_of_fuel\"}"), "{metrics}");
    assert!(metrics.contains("sandgate_execution_duration_seconds_bucket"), "{metrics}");
    assert!(metrics.contains("sandgate_executions_in_flight"), "{metrics}");
}
