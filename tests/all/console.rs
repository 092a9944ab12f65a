//! The operator console in a real browser: Debian's chromium, headless, driven by
//! selenium through chromium-driver (`tests/python/console_browser.py`), against the
//! real binary after a scripted workload: executions that succeed and fail, tool
//! calls, model calls through the stub provider (from code and through the proxy), a
//! denied call and a budget refusal. Screenshots of every page are kept in
//! `target/console-screenshots/`; with `SANDGATE_UPDATE_SCREENSHOTS=1` the overview's
//! also replaces `docs/console-overview.png`, the one the README shows.

use std::path::PathBuf;
use std::process::Command;

use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

use crate::binary::{sandgate, start, terminate};
use crate::harness::*;
use crate::stub::Stub;

async fn run(base: &str, key: &str, code: &str) -> Value {
    let (status, body) = call(Method::POST, format!("{base}/v1/execute"), key, Some(json!({ "code": code }))).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body
}

#[tokio::test]
async fn the_console_shows_what_the_api_shows_in_a_real_browser() {
    let stub = Stub::start();
    let dir = temp_dir("console");
    std::fs::create_dir_all(dir.join("policies")).unwrap();
    std::fs::write(
        dir.join("policies/all.toml"),
        r#"[[policy]]
name = "labs"
description = "The labs team: the test tools and economy models."
principals = ["team:labs"]
[policy.limits]
[policy.tools]
allow = ["test.*", "everything.*"]
[policy.models]
tiers = ["economy"]
[policy.sessions]
[policy.budget]
scope = "team"
usd_per_day = 5

[[policy]]
name = "no failing for bob"
principals = ["user:bob"]
[policy.tools]
deny = ["test.fail"]
[policy.budget]
scope = "user"
tokens_per_day = 1
"#,
    )
    .unwrap();
    let ApiKey { token: alice, entry: a } = api_key("alice-laptop", "alice", "labs", "admin");
    let ApiKey { token: bob, entry: b } = api_key("bob-laptop", "bob", "labs", "member");
    let config = dir.join("sandgate.toml");
    std::fs::write(
        &config,
        format!(
            r#"policies = "policies"
[sandbox]
test_capability = true

[mcp.servers.everything]
command = "{everything}"

{}
{a}{b}"#,
            stub.openai_config("SANDGATE_CONSOLE_PROVIDER_KEY", &[("cheap", "gpt-cheap-ok", "economy")]),
            everything = crate::mcp::npm_bin("mcp-server-everything").display()
        ),
    )
    .unwrap();
    let mut command = sandgate();
    command
        .env("SANDGATE_CONSOLE_PROVIDER_KEY", "sk-stub-test")
        .env("SANDGATE_LEDGER", dir.join("ledger.db"))
        .args(["serve", "--listen", "127.0.0.1:0", "--config"])
        .arg(&config);
    let (mut child, base) = start(command);
    let ready = {
        let (base, alice) = (base.clone(), alice.clone());
        tokio::task::spawn_blocking(move || crate::mcp::wait_for_tools(&base, &alice, &["everything.echo"]))
    };
    ready.await.unwrap();

    // The workload.
    let echoed = run(&base, &alice, "return await tools.everything.echo({ message: 'hi' })").await;
    assert_eq!(echoed["ok"], true, "{echoed}");
    let body = run(
        &base,
        &alice,
        "console.log('weekly summary for <b>labs</b>');\n\
         const echoed = await tools.test.echo({ n: 1 });\n\
         const answer = await model.chat({ model: 'cheap', messages: [{ role: 'user', content: 'summarise the week' }] });\n\
         return [echoed.n, answer.model];",
    )
    .await;
    assert_eq!(body["result"], json!([1, "cheap"]), "{body}");
    assert_eq!(run(&base, &alice, "throw new Error('no')").await["error"]["kind"], "exception");

    assert_eq!(run(&base, &bob, "return (await tools.test.echo({ s: 'hi' })).s").await["result"], "hi");
    let denied = run(&base, &bob, "return await tools.test.fail({})").await;
    assert_eq!(denied["error"]["kind"], "tool_denied", "{denied}");
    let (status, refused) = call(
        Method::POST,
        format!("{base}/v1/chat/completions"),
        &bob,
        Some(json!({ "model": "cheap", "messages": [{ "role": "user", "content": "hello" }] })),
    )
    .await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "a budget refusal: {refused}");
    let (status, answered) = call(
        Method::POST,
        format!("{base}/v1/chat/completions"),
        &alice,
        Some(json!({ "model": "cheap", "messages": [{ "role": "user", "content": "hello there" }] })),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{answered}");
    let (status, opened) = call(Method::POST, format!("{base}/v1/sessions"), &alice, Some(json!({}))).await;
    assert_eq!(status, StatusCode::CREATED, "{opened}");
    let session = opened["session_id"].as_str().unwrap().to_string();
    let (_, body) = call(
        Method::POST,
        format!("{base}/v1/execute"),
        &alice,
        Some(json!({ "code": "globalThis.kept = 41; kept + 1", "session_id": session })),
    )
    .await;
    assert_eq!(body["result"], 42, "{body}");

    // The browser.
    let shots = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/console-screenshots");
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/python/console_browser.py");
    let output = tokio::task::spawn_blocking({
        let (base, shots) = (base.clone(), shots.clone());
        move || Command::new("python3").args([script, &base, &alice, &bob, "bob"]).arg(&shots).output().unwrap()
    })
    .await
    .unwrap();
    terminate(&child);
    child.wait().unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "the browser test failed:\n{stdout}\n{}", String::from_utf8_lossy(&output.stderr));
    let seen: Value = serde_json::from_str(stdout.lines().last().unwrap_or("")).expect("the script's summary");
    assert_eq!(seen["overview_executions"], 6, "{seen}");
    assert_eq!(seen["sessions"], json!([session]), "{seen}");
    assert_eq!(seen["budgets"]["user bob daily"]["used_tokens"], "0", "{seen}");
    assert!(seen["budgets"]["team labs daily"]["spent_usd"].as_str().unwrap() > "0.000000", "{seen}");
    assert_eq!(seen["tools"]["everything"]["calls"], "1", "{seen}");
    assert_eq!(seen["tools"]["everything"]["status"], "ready", "{seen}");
    assert_eq!(seen["calls"]["tools.test.fail"]["errors"], "1", "the denied call: {seen}");
    assert_eq!(seen["calls"]["tools.test.echo"]["calls"], "2", "{seen}");
    // The execution that called a tool and a model opens as its timeline, with the
    // model call's cost as the ledger has it.
    assert_eq!(seen["execution_outcome"], "ok", "{seen}");
    assert!(seen["execution_calls"][0].as_str().unwrap().contains("tools.test.echo"), "{seen}");
    assert!(seen["execution_models"][0].as_str().unwrap().contains("cheap"), "{seen}");
    assert_eq!(
        seen["execution_logs"],
        json!(["log\nweekly summary for <b>labs</b>"]),
        "kept, and shown as text: {seen}"
    );
    let cost = seen["execution_cost"].as_str().unwrap().trim_end_matches(" USD").parse::<f64>().unwrap();
    assert!(cost > 0.0, "{seen}");
    assert!(seen["explain"].as_str().unwrap().starts_with("deny: user bob (team labs), tool test.fail"), "{seen}");
    assert!(seen["explain_rule"].as_str().unwrap().contains("no failing for bob"), "{seen}");
    for page in [
        "overview",
        "usage",
        "models",
        "tools",
        "budgets",
        "executions",
        "execution",
        "sessions",
        "policies",
        "usage-narrow",
    ] {
        let file = shots.join(format!("{page}.png"));
        let bytes = std::fs::read(&file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        assert!(bytes.starts_with(b"\x89PNG"), "{page} is a PNG");
    }
    if std::env::var_os("SANDGATE_UPDATE_SCREENSHOTS").is_some() {
        let docs = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("docs");
        std::fs::create_dir_all(&docs).unwrap();
        std::fs::copy(shots.join("overview.png"), docs.join("console-overview.png")).unwrap();
    }
}

/// In local mode the console opens for the local admin, on loopback names only; with
/// keys it asks for one. Either way it keeps the API's Host and Origin rules, and its
/// sign-in takes JSON only.
#[tokio::test]
async fn the_console_keeps_the_apis_host_and_origin_rules() {
    let local = crate::binary::Running::serve(&[]);
    let page = client().get(format!("{}/ui", local.base)).send().await.unwrap();
    assert_eq!(page.status(), StatusCode::OK);
    assert!(page.text().await.unwrap().contains("Signed in as <strong id=\"viewer\">local (team local, admin)"));
    let foreign =
        client().get(format!("{}/ui", local.base)).header("host", "sandgate.example.com").send().await.unwrap();
    assert_eq!(foreign.status(), StatusCode::FORBIDDEN, "a non-loopback Host in local mode");
    let from_page =
        client().get(format!("{}/ui/usage", local.base)).header("origin", "http://evil.example").send().await.unwrap();
    assert_eq!(from_page.status(), StatusCode::FORBIDDEN, "another web origin");
    drop(local);

    let dir = temp_dir("console-keys");
    let ApiKey { token, entry } = api_key("carol-laptop", "carol", "ops", "member");
    let config = dir.join("sandgate.toml");
    std::fs::write(&config, entry).unwrap();
    let keyed = crate::binary::Running::serve(&["--config", config.to_str().unwrap()]);
    let no_redirects = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap();
    let anonymous = no_redirects.get(format!("{}/ui/usage", keyed.base)).send().await.unwrap();
    assert_eq!(anonymous.status(), StatusCode::SEE_OTHER);
    assert_eq!(anonymous.headers()["location"], "/ui/login");
    let form = client()
        .post(format!("{}/ui/login", keyed.base))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(format!("key={token}"))
        .send()
        .await
        .unwrap();
    assert_eq!(form.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE, "a cross-site form cannot sign anyone in");
    let wrong =
        client().post(format!("{}/ui/login", keyed.base)).json(&json!({ "key": "sg_nope" })).send().await.unwrap();
    assert_eq!(wrong.status(), StatusCode::UNAUTHORIZED);
    let signed = client().post(format!("{}/ui/login", keyed.base)).json(&json!({ "key": token })).send().await.unwrap();
    assert_eq!(signed.status(), StatusCode::NO_CONTENT);
    let cookie = signed.headers()["set-cookie"].to_str().unwrap().to_string();
    assert!(
        cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict") && cookie.contains("Path=/ui"),
        "{cookie}"
    );
    assert!(!cookie.contains(&token), "the cookie does not carry the key");
    let value = cookie.split(';').next().unwrap().to_string();
    let page = client().get(format!("{}/ui/usage", keyed.base)).header("cookie", &value).send().await.unwrap();
    assert_eq!(page.status(), StatusCode::OK);
    assert!(page.text().await.unwrap().contains("carol (team ops, member)"));
    let forged = value.replace("v2.", "v2.00");
    let page = no_redirects.get(format!("{}/ui/usage", keyed.base)).header("cookie", &forged).send().await.unwrap();
    assert_eq!(page.status(), StatusCode::SEE_OTHER, "a changed cookie is not a sign-in");
}
