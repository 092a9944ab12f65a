//! The Grafana dashboard in `deploy/grafana/sandgate.json` queries only metrics the
//! real binary exports: every `sandgate_*` name in its queries is in `/metrics` after
//! a workload that touches each part (executions, a refused request, a model call
//! through the stub provider, an MCP upstream, a policy reload, a PostgreSQL store).

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::binary::{sandgate, start, terminate};
use crate::harness::*;
use crate::postgres;
use crate::stub::Stub;

/// Every query string in the dashboard: panel targets and template variables.
fn queries(value: &Value, out: &mut Vec<String>) {
    match value {
        Value::Object(map) => {
            for (key, item) in map {
                match (key.as_str(), item) {
                    ("expr" | "definition", Value::String(query)) => out.push(query.clone()),
                    ("query", Value::String(query)) if query.contains('(') => out.push(query.clone()),
                    _ => queries(item, out),
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|item| queries(item, out)),
        _ => {}
    }
}

/// The `sandgate_*` metric names in `text`.
fn metric_names(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut rest = text;
    while let Some(at) = rest.find("sandgate_") {
        let tail = &rest[at..];
        let end = tail.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).unwrap_or(tail.len());
        names.insert(tail[..end].to_string());
        rest = &tail[end..];
    }
    names
}

/// The names `/metrics` has samples for.
fn exported(metrics: &str) -> BTreeSet<String> {
    metrics
        .lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| line.split(['{', ' ']).next())
        .map(str::to_string)
        .collect()
}

#[tokio::test]
async fn the_grafana_dashboard_queries_only_metrics_sandgate_exports() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/grafana/sandgate.json");
    let dashboard: Value =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).expect("the dashboard is JSON");
    assert_eq!(dashboard["uid"], "sandgate-overview");
    let mut found = Vec::new();
    queries(&dashboard, &mut found);
    assert!(found.len() > 15, "{found:?}");
    let wanted: BTreeSet<String> = found.iter().flat_map(|q| metric_names(q)).collect();
    assert!(wanted.len() >= 12, "{wanted:?}");
    let panels = dashboard["panels"].as_array().unwrap();
    let ids: BTreeSet<u64> = panels.iter().map(|p| p["id"].as_u64().unwrap()).collect();
    assert_eq!(ids.len(), panels.len(), "panel ids are unique");

    // A real binary on PostgreSQL, with a model provider (the stub), an MCP upstream
    // that cannot start, and a policy directory to change.
    let stub = Stub::start();
    let url = postgres::database().await;
    let dir = temp_dir("grafana");
    std::fs::create_dir_all(dir.join("policies")).unwrap();
    let policy = |limit: u32| {
        format!(
            "[[policy]]\nname = \"everyone\"\nprincipals = [\"*\"]\n[policy.limits]\ntool_calls = {limit}\n\
             [policy.tools]\nallow = [\"*\"]\n[policy.models]\ntiers = [\"economy\"]\n"
        )
    };
    std::fs::write(dir.join("policies/all.toml"), policy(10)).unwrap();
    let config = dir.join("sandgate.toml");
    std::fs::write(
        &config,
        format!(
            r#"policies = "policies"
[mcp]
connect_timeout_ms = 2000
[mcp.servers.missing]
command = "/nonexistent/mcp-server"

{}"#,
            stub.openai_config("SANDGATE_GRAFANA_PROVIDER_KEY", &[("cheap", "gpt-cheap-ok", "economy")])
        ),
    )
    .unwrap();
    let mut command = sandgate();
    command
        .env("SANDGATE_GRAFANA_PROVIDER_KEY", "sk-stub-test")
        .env("SANDGATE_STORE_URL", &url)
        .args(["serve", "--listen", "127.0.0.1:0", "--config"])
        .arg(&config);
    let (mut child, base) = start(command);

    let (status, body) = post_to(&base, json!({ "code": "return 1 + 1" })).await;
    assert_eq!((status, body["ok"].clone()), (StatusCode::OK, json!(true)), "{body}");
    let (_, body) = post_to(&base, json!({ "code": "throw new Error('no')" })).await;
    assert_eq!(body["error"]["kind"], "exception", "{body}");
    let refused = client()
        .post(format!("{base}/v1/execute"))
        .header("content-type", "text/plain")
        .body(r#"{"code": "return 1"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE);
    let (status, body) = call(
        reqwest::Method::POST,
        format!("{base}/v1/chat/completions"),
        "",
        Some(json!({ "model": "cheap", "messages": [{ "role": "user", "content": "hello there" }] })),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    std::fs::write(dir.join("policies/all.toml"), policy(20)).unwrap();

    // Every metric the dashboard asks for shows up (the policy reload and the
    // upstream's gauges within a few seconds).
    let deadline = Instant::now() + Duration::from_secs(30);
    let missing = loop {
        let metrics = client().get(format!("{base}/metrics")).send().await.unwrap().text().await.unwrap();
        let have = exported(&metrics);
        let missing: Vec<&String> = wanted.iter().filter(|name| !have.contains(*name)).collect();
        if missing.is_empty() || Instant::now() > deadline {
            break missing.into_iter().cloned().collect::<Vec<_>>();
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    terminate(&child);
    child.wait().unwrap();
    assert!(missing.is_empty(), "the dashboard queries metrics /metrics does not have: {missing:?}");
}
