//! One vocabulary of error kinds, one table per surface. The same failures
//! (unauthorised, forbidden, rate-limited, not found, busy, overloaded, a model
//! provider down) are sent through HTTP, the model routes in both formats, MCP (the
//! official Rust SDK), the console and the command line, and each answer is checked
//! against its surface's table: `http::error::status`, `http::models::error_type`,
//! `mcp::server::error_code` (and `isError` results carrying the kind), and
//! `cli::exit_code`. What sandboxed code sees is checked from inside it. Refusals made
//! through MCP reach `/metrics` like the API's.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use reqwest::{Method, StatusCode};
use rmcp::model::{
    CallToolRequestParams, CallToolResult, ClientCapabilities, ClientConfig, GetTaskParams, Implementation,
};
use rmcp::service::RunningService;
use rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig;
use rmcp::transport::StreamableHttpClientTransport;
use rmcp::{RoleClient, ServiceExt};
use serde_json::{json, Value};

use sandgate::error::Kind;
use sandgate::http::error::status;
use sandgate::model::Format;

use crate::binary::{sandgate, start, Running};
use crate::harness::{api_key, call, client, free_port, temp_dir};

/// The failures, the kind each stands for, and every surface that can meet it. The
/// command line acts as the trusted local user (never unauthorised) and runs one
/// execution per process, so per-minute rates, which the embedded store counts per
/// process, and a full server are a server's; a model call takes no execution slot,
/// so the model routes are never busy or full; the console runs no code.
const FAILURES: [(&str, Kind, &[&str]); 7] = [
    ("unauthorised", Kind::Unauthorized, &["http", "openai", "anthropic", "console"]),
    ("forbidden", Kind::Forbidden, &["http", "mcp", "console", "cli"]),
    ("rate-limited", Kind::RateLimited, &["http", "openai", "anthropic", "mcp", "guest", "console"]),
    ("not found", Kind::NotFound, &["http", "mcp", "mcp-protocol", "console", "cli"]),
    ("busy", Kind::SessionBusy, &["http", "mcp", "cli"]),
    ("overloaded", Kind::Overloaded, &["http", "mcp"]),
    ("upstream down", Kind::UpstreamError, &["openai", "anthropic", "mcp", "guest", "cli"]),
];

/// The server's configuration: two executions at once (so two sleepers fill it), a
/// model in each format whose provider listens nowhere, and the test capability for
/// sleeping.
fn config(dead: u16) -> String {
    format!(
        "[sandbox]\ntest_capability = true\nmax_concurrent = 2\n\
         [providers.dead]\nkind = \"openai\"\nbase_url = \"http://127.0.0.1:{dead}/v1\"\n\
         api_key_env = \"SANDGATE_VOCABULARY_KEY\"\ntimeout_ms = 2000\n\
         [models.gone]\nprovider = \"dead\"\nupstream = \"gpt-gone\"\ntier = \"economy\"\n\
         input_per_mtok = 1.0\noutput_per_mtok = 1.0\n\
         [providers.dead-anthropic]\nkind = \"anthropic\"\nbase_url = \"http://127.0.0.1:{dead}\"\n\
         api_key_env = \"SANDGATE_VOCABULARY_KEY\"\ntimeout_ms = 2000\n\
         [models.gone-claude]\nprovider = \"dead-anthropic\"\nupstream = \"claude-gone\"\ntier = \"economy\"\n\
         input_per_mtok = 1.0\noutput_per_mtok = 1.0\n"
    )
}

/// Team `crew` runs code, sleeps, calls economy models and keeps sessions; `limited`
/// runs one execution a minute and `chatty` one model call; nobody else may do anything.
const POLICY: &str = r#"
[[policy]]
name = "crew"
principals = ["team:crew"]
[policy.limits]
wall_ms = 120_000
[policy.tools]
allow = ["test.*"]
[policy.models]
tiers = ["economy"]
[policy.sessions]

[[policy]]
name = "limited"
principals = ["user:limited"]
[policy.rate]
executions_per_minute = 1

[[policy]]
name = "chatty"
principals = ["user:chatty"]
[policy.rate]
model_calls_per_minute = 1
"#;

const SLEEP: &str = "await tools.test.sleep({ms: 120000}); return 1";
const CALL_GONE: &str = "return await model.chat({model: 'gone', messages: [{role: 'user', content: 'hi'}]})";

/// What one surface answered.
#[derive(Debug, PartialEq)]
enum Answer {
    /// An HTTP status and the kind in the body (`error.kind`, the model routes' `code`
    /// or `kind`, the console's page).
    Http(StatusCode, Option<Kind>),
    /// An Anthropic-format error: status and `error.type`, with the kind beside it.
    Anthropic(StatusCode, String, Option<Kind>),
    /// An MCP tool result with `isError` and the kind in `structuredContent`.
    ToolError(Kind),
    /// A JSON-RPC error: its code and `data.kind`.
    Protocol(i32, Option<Kind>),
    /// An execution that ran and failed: the kind its outcome (or the caught error) has.
    Outcome(Kind),
    /// The command line: exit status and the printed kind.
    Exit(i32, Option<Kind>),
}

/// What each surface's table says a failure of `kind` is.
fn expected(surface: &str, kind: Kind) -> Answer {
    match surface {
        "http" | "console" => Answer::Http(status(kind), Some(kind)),
        "openai" => Answer::Http(status(kind), Some(kind)),
        "anthropic" => Answer::Anthropic(
            status(kind),
            sandgate::http::models::error_type(Format::Anthropic, kind).into(),
            Some(kind),
        ),
        "mcp" => Answer::ToolError(kind),
        "mcp-protocol" => Answer::Protocol(sandgate::mcp::server::error_code(kind).0, Some(kind)),
        "guest" => Answer::Outcome(kind),
        "cli" => Answer::Exit(sandgate::cli::exit_code(kind).into(), Some(kind)),
        other => panic!("no surface {other}"),
    }
}

fn kind_of(value: &Value) -> Option<Kind> {
    value.as_str().and_then(Kind::parse)
}

fn http_answer(status: StatusCode, body: &Value) -> Answer {
    Answer::Http(status, kind_of(&body["error"]["kind"]))
}

/// The served binary and the keys of its principals.
struct Served {
    server: Running,
    keys: BTreeMap<&'static str, String>,
}

impl Served {
    fn base(&self) -> &str {
        &self.server.base
    }

    fn key(&self, name: &str) -> &str {
        &self.keys[name]
    }

    async fn execute(&self, key: &str, body: Value) -> Answer {
        let (code, body) = call(Method::POST, format!("{}/v1/execute", self.base()), key, Some(body)).await;
        match (code, body["ok"].as_bool()) {
            (StatusCode::OK, Some(false)) => Answer::Outcome(kind_of(&body["error"]["kind"]).expect("a kind")),
            _ => http_answer(code, &body),
        }
    }

    async fn model(&self, key: &str, format: Format) -> Answer {
        let (path, body) = match format {
            Format::Anthropic => (
                "messages",
                json!({"model": "gone-claude", "max_tokens": 16, "messages": [{"role": "user", "content": "hi"}]}),
            ),
            _ => ("chat/completions", json!({"model": "gone", "messages": [{"role": "user", "content": "hi"}]})),
        };
        let (code, body) = call(Method::POST, format!("{}/v1/{path}", self.base()), key, Some(body)).await;
        match format {
            Format::Anthropic => Answer::Anthropic(
                code,
                body["error"]["type"].as_str().unwrap_or_default().to_string(),
                kind_of(&body["error"]["kind"]),
            ),
            _ => Answer::Http(code, kind_of(&body["error"]["code"])),
        }
    }

    async fn mcp(&self, key: &str) -> RunningService<RoleClient, ClientConfig> {
        let transport = StreamableHttpClientTransport::from_config(
            StreamableHttpClientTransportConfig::with_uri(format!("{}/mcp", self.base())).auth_header(key.to_string()),
        );
        let info =
            ClientConfig::new(ClientCapabilities::builder().enable_tasks().build(), Implementation::new("test", "1"));
        info.serve(transport).await.expect("the MCP client connects")
    }

    /// `sandgate_executions_rejected_total{reason}` as `/metrics` shows it now.
    async fn rejected(&self, reason: &str) -> u64 {
        let text = client().get(format!("{}/metrics", self.base())).send().await.unwrap().text().await.unwrap();
        let series = format!("sandgate_executions_rejected_total{{reason=\"{reason}\"}} ");
        text.lines().find_map(|line| line.strip_prefix(&series)).map_or(0, |n| n.trim().parse().unwrap())
    }
}

async fn mcp_execute(client: &RunningService<RoleClient, ClientConfig>, arguments: Value) -> Answer {
    let arguments = arguments.as_object().cloned().unwrap();
    let result: CallToolResult =
        client.call_tool(CallToolRequestParams::new("execute").with_arguments(arguments)).await.unwrap();
    assert_eq!(result.is_error, Some(true), "{result:?}");
    let structured = result.structured_content.expect("the outcome, structured");
    Answer::ToolError(kind_of(&structured["error"]["kind"]).expect("a kind"))
}

/// The console's answer to `path` as `cookie`, asked for a failure of `kind`.
async fn console(base: &str, path: &str, cookie: Option<&str>, kind: Kind) -> Answer {
    let mut request = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
        .get(format!("{base}{path}"));
    if let Some(cookie) = cookie {
        request = request.header("cookie", cookie);
    }
    // Pages carry no machine-readable kind: the status is the answer.
    Answer::Http(request.send().await.unwrap().status(), Some(kind))
}

async fn sign_in(base: &str, key: &str) -> (StatusCode, Option<String>) {
    let response = client()
        .post(format!("{base}/ui/login"))
        .header("content-type", "application/json")
        .body(json!({ "key": key }).to_string())
        .send()
        .await
        .unwrap();
    let cookie =
        response.headers().get("set-cookie").map(|c| c.to_str().unwrap().split(';').next().unwrap().to_string());
    (response.status(), cookie)
}

/// A configuration directory for the command line, acting as the local user.
fn cli_dir(label: &str, dead: u16, policy: &str) -> PathBuf {
    let dir = temp_dir(label);
    std::fs::create_dir_all(dir.join("policies")).unwrap();
    std::fs::write(dir.join("policies/local.toml"), policy).unwrap();
    std::fs::write(
        dir.join("sandgate.toml"),
        format!("policies = \"policies\"\n[ledger]\npath = \"ledger.db\"\n{}", config(dead)),
    )
    .unwrap();
    dir
}

fn cli(dir: &Path, args: &[&str], code: Option<&str>) -> Command {
    let mut command = sandgate();
    command
        .env("SANDGATE_VOCABULARY_KEY", "sk-test")
        .env("SANDGATE_LEDGER", dir.join("ledger.db"))
        .args(args)
        .arg("--config")
        .arg(dir.join("sandgate.toml"));
    if code.is_some() {
        command.arg("-");
    }
    command
}

/// Runs the command line; returns what it printed as an [`Answer::Exit`] and its JSON.
fn run_cli(dir: &Path, args: &[&str], code: Option<&str>) -> (Answer, Value) {
    use std::io::Write;
    let mut child =
        cli(dir, args, code).stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    child.stdin.take().unwrap().write_all(code.unwrap_or("").as_bytes()).unwrap();
    let output = child.wait_with_output().unwrap();
    let body: Value = serde_json::from_slice(&output.stdout).unwrap_or(Value::Null);
    (Answer::Exit(output.status.code().unwrap_or(-1), kind_of(&body["error"]["kind"])), body)
}

struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test]
async fn every_surface_answers_the_same_failures_from_its_own_table() {
    let dead = free_port();
    let dir = temp_dir("vocabulary");
    std::fs::create_dir_all(dir.join("policies")).unwrap();
    std::fs::write(dir.join("policies/all.toml"), POLICY).unwrap();
    let mut keys = BTreeMap::new();
    let mut entries = String::new();
    for (name, team) in [
        ("member", "crew"),
        ("holder", "crew"),
        ("filler", "crew"),
        ("crowd", "crew"),
        ("limited", "crew"),
        ("chatty", "crew"),
        ("outsider", "elsewhere"),
    ] {
        let key = api_key(name, name, team, "member");
        keys.insert(name, key.token);
        entries.push_str(&key.entry);
    }
    std::fs::write(
        dir.join("sandgate.toml"),
        format!("policies = \"policies\"\n[ledger]\npath = \"ledger.db\"\n{}\n{entries}", config(dead)),
    )
    .unwrap();
    let mut command = sandgate();
    command
        .env("SANDGATE_VOCABULARY_KEY", "sk-test")
        .env("SANDGATE_LEDGER", dir.join("ledger.db"))
        .args(["serve", "--listen", "127.0.0.1:0", "--config"])
        .arg(dir.join("sandgate.toml"));
    let (child, base) = start(command);
    let served = Served { server: Running { child, base }, keys };
    let base = served.base().to_string();
    let quick = json!({"code": "return 1"});

    // Each failure, through each surface that can meet it: (failure, surface, answer).
    let mut answers: Vec<(&str, &str, Answer)> = Vec::new();

    // Unauthorised: a key sandgate does not know.
    let bogus = "sg_not-a-key";
    answers.push(("unauthorised", "http", served.execute(bogus, quick.clone()).await));
    answers.push(("unauthorised", "openai", served.model(bogus, Format::OpenAi).await));
    answers.push(("unauthorised", "anthropic", served.model(bogus, Format::Anthropic).await));
    let (code, body) = call(
        Method::POST,
        format!("{base}/mcp"),
        bogus,
        Some(json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {}})),
    )
    .await;
    answers.push(("unauthorised", "http", http_answer(code, &body)));
    let (code, _) = sign_in(&base, bogus).await;
    answers.push(("unauthorised", "console", Answer::Http(code, Some(Kind::Unauthorized))));
    answers.push(("unauthorised", "console", console(&base, "/ui/events", None, Kind::Unauthorized).await));

    // Forbidden: a principal no policy lets run code or call models, and a member
    // asking what the policies decide for someone else.
    answers.push(("forbidden", "http", served.execute(served.key("outsider"), quick.clone()).await));
    let outsider = served.mcp(served.key("outsider")).await;
    answers.push(("forbidden", "mcp", mcp_execute(&outsider, json!({"code": "return 1"})).await));
    outsider.cancel().await.unwrap();
    let (code, member_cookie) = sign_in(&base, served.key("member")).await;
    assert_eq!(code, StatusCode::NO_CONTENT);
    let member_cookie = member_cookie.unwrap();
    let path = "/ui/policies?what=execute&user=holder";
    answers.push(("forbidden", "console", console(&base, path, Some(&member_cookie), Kind::Forbidden).await));
    // The model routes refuse a model the caller may not use with the model kind.
    let outsider_model = served.model(served.key("outsider"), Format::OpenAi).await;
    assert_eq!(outsider_model, expected("openai", Kind::ModelDenied));
    let outsider_model = served.model(served.key("outsider"), Format::Anthropic).await;
    assert_eq!(outsider_model, expected("anthropic", Kind::ModelDenied));

    // Rate-limited: `limited` has one execution a minute, `chatty` one model call.
    let first = served.execute(served.key("limited"), quick.clone()).await;
    assert_eq!(first, Answer::Http(StatusCode::OK, None));
    answers.push(("rate-limited", "http", served.execute(served.key("limited"), quick.clone()).await));
    let limited = served.mcp(served.key("limited")).await;
    let before = served.rejected("rate_limited").await;
    answers.push(("rate-limited", "mcp", mcp_execute(&limited, json!({"code": "return 1"})).await));
    assert_eq!(served.rejected("rate_limited").await, before + 1, "an MCP refusal is counted where it is decided");
    limited.cancel().await.unwrap();
    // Sandboxed code sees the model's own kinds: the provider down, then the rate.
    let code = "const kinds = [];\nfor (let i = 0; i < 2; i++) {\n  try { await model.chat({model: 'gone', messages: [{role: 'user', content: 'hi'}]}) } catch (e) { kinds.push(e.kind) }\n}\nreturn kinds";
    let (status_code, body) =
        call(Method::POST, format!("{base}/v1/execute"), served.key("chatty"), Some(json!({"code": code}))).await;
    assert_eq!(status_code, StatusCode::OK, "{body}");
    let kinds: Vec<Kind> = body["result"].as_array().expect("two kinds").iter().filter_map(kind_of).collect();
    answers.push(("upstream down", "guest", Answer::Outcome(kinds[0])));
    answers.push(("rate-limited", "guest", Answer::Outcome(kinds[1])));
    answers.push(("rate-limited", "openai", served.model(served.key("chatty"), Format::OpenAi).await));
    answers.push(("rate-limited", "anthropic", served.model(served.key("chatty"), Format::Anthropic).await));
    // The console's live streams: a few per principal.
    let mut streams = Vec::new();
    let stream_answer = loop {
        let response = client().get(format!("{base}/ui/events")).header("cookie", &member_cookie).send().await.unwrap();
        if response.status() != StatusCode::OK || streams.len() > 16 {
            break response.status();
        }
        streams.push(response);
    };
    answers.push(("rate-limited", "console", Answer::Http(stream_answer, Some(Kind::RateLimited))));
    drop(streams);

    // Not found: an execution, a session and a task nobody has.
    let missing = "0190d5a0-0000-7000-8000-000000000000";
    let (code, body) = call(Method::GET, format!("{base}/v1/executions/{missing}"), served.key("member"), None).await;
    answers.push(("not found", "http", http_answer(code, &body)));
    let in_missing = json!({"code": "return 1", "session_id": missing});
    answers.push(("not found", "http", served.execute(served.key("member"), in_missing).await));
    let member = served.mcp(served.key("member")).await;
    answers.push(("not found", "mcp", mcp_execute(&member, json!({"code": "return 1", "session": missing})).await));
    let task = member.get_task(GetTaskParams::new(missing.to_string())).await;
    let protocol = match task {
        Err(rmcp::ServiceError::McpError(error)) => {
            Answer::Protocol(error.code.0, error.data.as_ref().and_then(|d| kind_of(&d["kind"])))
        }
        other => panic!("an unknown task is a protocol error: {other:?}"),
    };
    answers.push(("not found", "mcp-protocol", protocol));
    let path = format!("/ui/executions/{missing}");
    answers.push(("not found", "console", console(&base, &path, Some(&member_cookie), Kind::NotFound).await));

    // A model provider that is down, on every route to it.
    answers.push(("upstream down", "guest", served.execute(served.key("member"), json!({"code": CALL_GONE})).await));
    answers.push(("upstream down", "openai", served.model(served.key("member"), Format::OpenAi).await));
    answers.push(("upstream down", "anthropic", served.model(served.key("member"), Format::Anthropic).await));
    answers.push(("upstream down", "mcp", mcp_execute(&member, json!({"code": CALL_GONE})).await));
    member.cancel().await.unwrap();

    // Busy and overloaded: `holder` sleeps in its session and `filler` beside it, which
    // fills the server's two slots.
    let (code, opened) = call(Method::POST, format!("{base}/v1/sessions"), served.key("holder"), Some(json!({}))).await;
    assert_eq!(code, StatusCode::CREATED, "{opened}");
    let session = opened["session_id"].as_str().unwrap().to_string();
    let mut sleepers = Vec::new();
    for (who, body) in [("holder", json!({"code": SLEEP, "session_id": session})), ("filler", json!({"code": SLEEP}))] {
        let (code, view) = call(Method::POST, format!("{base}/v1/executions"), served.key(who), Some(body)).await;
        assert_eq!(code, StatusCode::ACCEPTED, "{view}");
        sleepers.push((who, view["execution_id"].as_str().unwrap().to_string()));
    }
    let in_session = json!({"code": "return 1", "session_id": session});
    answers.push(("busy", "http", served.execute(served.key("holder"), in_session).await));
    let holder = served.mcp(served.key("holder")).await;
    answers.push(("busy", "mcp", mcp_execute(&holder, json!({"code": "return 1", "session": session})).await));
    holder.cancel().await.unwrap();
    answers.push(("overloaded", "http", served.execute(served.key("crowd"), quick.clone()).await));
    let crowd = served.mcp(served.key("crowd")).await;
    let before = served.rejected("overloaded").await;
    answers.push(("overloaded", "mcp", mcp_execute(&crowd, json!({"code": "return 1"})).await));
    assert_eq!(served.rejected("overloaded").await, before + 1, "an MCP refusal is counted where it is decided");
    crowd.cancel().await.unwrap();
    for (who, id) in sleepers {
        call(Method::DELETE, format!("{base}/v1/executions/{id}"), served.key(who), None).await;
    }

    // The command line, as the local user on its own store.
    let local = cli_dir("vocabulary-cli", dead, "[[policy]]\nname = \"local\"\nprincipals = [\"*\"]\n[policy.limits]\nwall_ms = 120_000\n[policy.tools]\nallow = [\"test.*\"]\n[policy.models]\ntiers = [\"economy\"]\n[policy.sessions]\n");
    let nobody = cli_dir(
        "vocabulary-cli-nobody",
        dead,
        "[[policy]]\nname = \"others\"\nprincipals = [\"user:someone-else\"]\n[policy.limits]\n",
    );
    answers.push(("forbidden", "cli", run_cli(&nobody, &["exec"], Some("return 1")).0));
    answers.push(("not found", "cli", run_cli(&local, &["exec", "--session", missing], Some("return 1")).0));
    answers.push(("upstream down", "cli", run_cli(&local, &["exec"], Some(CALL_GONE)).0));
    let (opened, body) = run_cli(&local, &["session", "open"], None);
    assert_eq!(opened, Answer::Exit(0, None), "{body}");
    let session = body["session_id"].as_str().unwrap().to_string();
    let sleep_in_session = || {
        use std::io::Write;
        let mut child = cli(&local, &["exec", "--session", &session], Some(SLEEP))
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(SLEEP.as_bytes()).unwrap();
        Killed(child)
    };
    // The sleeper holds the session once it has started; a quick run may get in first
    // (and the sleeper, finding the session busy, ends: it starts again).
    let mut sleeper = sleep_in_session();
    let deadline = Instant::now() + Duration::from_secs(60);
    let busy = loop {
        let (answer, body) = run_cli(&local, &["exec", "--session", &session], Some("return 1"));
        if answer != Answer::Exit(0, None) || Instant::now() > deadline {
            break answer;
        }
        assert_eq!(body["result"], 1, "{body}");
        if sleeper.0.try_wait().unwrap().is_some() {
            sleeper = sleep_in_session();
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    answers.push(("busy", "cli", busy));
    drop(sleeper);

    // Every answer is its table's, and every failure went through every surface that
    // can meet it.
    for (failure, surface, answer) in &answers {
        let kind = FAILURES.iter().find(|(name, _, _)| name == failure).unwrap().1;
        assert_eq!(answer, &expected(surface, kind), "{failure} through {surface}");
    }
    for (failure, _, surfaces) in FAILURES {
        for surface in surfaces {
            assert!(
                answers.iter().any(|(f, s, _)| *f == failure && s == surface),
                "{failure} never went through {surface}"
            );
        }
    }
}
