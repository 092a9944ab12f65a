//! MCP Code Mode against real MCP servers from npm (`tests/mcp/package.json`, installed
//! by `tests/run`): `@modelcontextprotocol/server-everything` over stdio and over its
//! streamable HTTP mode, and `@modelcontextprotocol/server-memory` over stdio. Clients
//! are plain HTTP for `/v1/tools` and `/v1/execute`, and the official Python `mcp` SDK
//! for the Code Mode server over both of its transports.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::harness::{
    api_key, client, free_port, get_text, ledger_rows_at, ledger_rows_within, post_as, start_server_with, ApiKey,
    TestServer,
};

/// `tests/mcp/node_modules/.bin/<name>`; panics with the fix when npm packages are missing.
pub(crate) fn npm_bin(name: &str) -> PathBuf {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/mcp/node_modules/.bin").join(name);
    assert!(path.exists(), "{} is missing; run: npm ci --prefix tests/mcp (tests/run does)", path.display());
    path
}

/// `server-everything` in streamable HTTP mode, killed when dropped.
struct HttpUpstream {
    child: Child,
    url: String,
}

impl Drop for HttpUpstream {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_http_upstream() -> HttpUpstream {
    let port = free_port();
    let child = Command::new(npm_bin("mcp-server-everything"))
        .arg("streamableHttp")
        .env("PORT", port.to_string())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("mcp-server-everything starts");
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "mcp-server-everything did not listen on port {port}");
        std::thread::sleep(Duration::from_millis(100));
    }
    HttpUpstream { child, url: format!("http://127.0.0.1:{port}/mcp") }
}

/// The shared Code Mode server: three upstreams, one key, a policy that denies one tool.
struct Fixture {
    server: TestServer,
    key: String,
    config: PathBuf,
    _http: HttpUpstream,
}

const POLICY: &str = r#"
[[policy]]
name = "code-mode"
principals = ["*"]
[policy.limits]
wall_ms = 30_000
[policy.tools]
allow = ["everything.*", "memory.*", "remote.*"]
deny = ["everything.get_env"]
[policy.sessions]
"#;

/// A policy letting everyone run code (30 s wall clock) and call tools matching `glob`.
fn allow_tools(glob: &str) -> String {
    format!(
        "[[policy]]\nname = \"all\"\nprincipals = [\"*\"]\n[policy.limits]\nwall_ms = 30_000\n\
         [policy.tools]\nallow = [\"{glob}\"]\n"
    )
}

fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let http = start_http_upstream();
        let key = api_key("mcp-tests", "ada", "research", "member");
        let memory_file = crate::harness::temp_dir("memory").join("memory.jsonl");
        let config = format!(
            r#"
[mcp.servers.everything]
command = "{everything}"
[mcp.servers.memory]
command = "sh"
args = ["-c", "MEMORY_FILE_PATH={memory} exec {memory_bin}"]
[mcp.servers.remote]
url = "{url}"
{entry}"#,
            everything = npm_bin("mcp-server-everything").display(),
            memory = memory_file.display(),
            memory_bin = npm_bin("mcp-server-memory").display(),
            url = http.url,
            entry = key.entry,
        );
        let server = start_server_with(&config, POLICY);
        let fixture = Fixture { config: server.dir.join("sandgate.toml"), server, key: key.token, _http: http };
        wait_for_tools(&fixture.server.base, &fixture.key, &["everything.echo", "memory.read_graph", "remote.echo"]);
        fixture
    })
}

fn tools_json(base: &str, key: &str) -> Value {
    let (status, body) = get_text(&format!("{base}/v1/tools?format=json"), key);
    assert_eq!(status, StatusCode::OK, "{body}");
    serde_json::from_str(&body).unwrap()
}

fn tool_names(tools: &Value) -> Vec<String> {
    tools["tools"].as_array().unwrap().iter().map(|t| t["name"].as_str().unwrap().to_string()).collect()
}

/// Waits until the catalog lists every one of `names` (servers connect in the background).
pub(crate) fn wait_for_tools(base: &str, key: &str, names: &[&str]) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let tools = tools_json(base, key);
        let listed = tool_names(&tools);
        if names.iter().all(|n| listed.iter().any(|l| l == n)) {
            return;
        }
        assert!(Instant::now() < deadline, "tools {names:?} never all appeared: {tools}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

async fn execute(fixture: &Fixture, body: Value) -> Value {
    let (status, body) = post_as(&fixture.server.base, Some(&fixture.key), body).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body
}

#[test]
fn the_catalog_names_every_allowed_upstream_tool_and_hides_denied_ones() {
    let fixture = fixture();
    let tools = tools_json(&fixture.server.base, &fixture.key);
    let names = tool_names(&tools);
    for expected in ["everything.get_tiny_image", "everything.get_sum", "memory.create_entities", "remote.get_sum"] {
        assert!(names.contains(&expected.to_string()), "{expected} missing from {names:?}");
    }
    assert!(!names.contains(&"everything.get_env".to_string()), "a denied tool is listed: {names:?}");
    assert!(names.contains(&"remote.get_env".to_string()), "only everything.get_env is denied: {names:?}");
    let tiny = tools["tools"].as_array().unwrap().iter().find(|t| t["name"] == "everything.get_tiny_image").unwrap();
    assert_eq!(tiny["upstream_name"], "get-tiny-image");
    let servers: Vec<&str> = tools["servers"].as_array().unwrap().iter().map(|s| s["name"].as_str().unwrap()).collect();
    assert_eq!(servers, ["everything", "memory", "remote"]);

    let (status, _) = get_text(&format!("{}/v1/tools?format=yaml", fixture.server.base), &fixture.key);
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (status, _) = get_text(&format!("{}/v1/tools", fixture.server.base), "sg_not_a_key");
    assert_eq!(status, StatusCode::UNAUTHORIZED);
}

#[test]
fn declarations_for_the_real_servers_compile_with_tsc() {
    let fixture = fixture();
    let (status, declarations) = get_text(&format!("{}/v1/tools?format=typescript", fixture.server.base), &fixture.key);
    assert_eq!(status, StatusCode::OK);
    assert!(declarations.contains("declare namespace tools.everything"), "{declarations}");
    assert!(declarations.contains("function get_sum("), "{declarations}");
    let dir = crate::harness::temp_dir("tsc");
    std::fs::write(dir.join("tools.d.ts"), &declarations).unwrap();
    // Code written against the declarations type-checks too.
    std::fs::write(
        dir.join("usage.ts"),
        "export async function main(): Promise<unknown> {\n\
         const [echo, sum] = await Promise.all([tools.everything.echo({ message: \"hi\" }), tools.remote.get_sum({ a: 1, b: 2 })]);\n\
         return { echo, sum };\n}\n",
    )
    .unwrap();
    let output = Command::new(npm_bin("tsc"))
        .args(["--noEmit", "--strict", "--target", "es2022", "--lib", "es2022", "tools.d.ts", "usage.ts"])
        .current_dir(&dir)
        .output()
        .expect("tsc runs");
    assert!(
        output.status.success(),
        "tsc rejected the declarations:\n{}\n{declarations}",
        String::from_utf8_lossy(&output.stdout)
    );
}

/// The Python stubs of the real servers pass `mypy --strict` (as a `.pyi` module), and
/// so does Python written against them; mypy catches a wrong argument.
#[test]
fn python_stubs_for_the_real_servers_pass_mypy() {
    crate::stub::require_python_module("mypy", "mypy");
    let fixture = fixture();
    let (status, stubs) = get_text(&format!("{}/v1/tools?format=python", fixture.server.base), &fixture.key);
    assert_eq!(status, StatusCode::OK);
    assert!(stubs.contains("class tools:") && stubs.contains("class everything:"), "{stubs}");
    assert!(stubs.contains("async def get_sum(**args: Unpack[GetSumArgs])"), "{stubs}");
    let dir = crate::harness::temp_dir("mypy");
    std::fs::write(dir.join("sandgate_tools.pyi"), &stubs).unwrap();
    let usage = "import asyncio\nfrom typing import Any\n\nfrom sandgate_tools import tools\n\n\nasync def main() -> Any:\n    echo, total = await asyncio.gather(\n        tools.everything.echo(message=\"hi\"), tools.remote.get_sum(a=1, b=2)\n    )\n    return echo, total\n";
    let check = |extra: &str| {
        std::fs::write(dir.join("usage.py"), format!("{usage}{extra}")).unwrap();
        Command::new("python3")
            .args(["-m", "mypy", "--strict", "--no-incremental", "--python-version", "3.11", "usage.py"])
            .current_dir(&dir)
            .output()
            .expect("mypy runs")
    };
    let output = check("");
    assert!(output.status.success(), "mypy rejected the stubs:\n{}\n{stubs}", String::from_utf8_lossy(&output.stdout));
    let wrong = check("\n\nasync def wrong() -> Any:\n    return await tools.everything.get_sum(a=\"one\", b=2)\n");
    assert!(!wrong.status.success(), "mypy should reject a str for an int");
    assert!(String::from_utf8_lossy(&wrong.stdout).contains("get_sum"), "{}", String::from_utf8_lossy(&wrong.stdout));
}

#[tokio::test]
async fn code_calls_tools_on_three_servers_concurrently() {
    let fixture = fixture();
    let code = r#"
        interface Sum { sum?: number }
        const started = Date.now();
        const [echo, local, remote, graph] = await Promise.all([
          tools.everything.echo({ message: "hello" }),
          tools.everything.get_sum({ a: 2, b: 3 }),
          tools.remote.get_sum({ a: 20, b: 22 }),
          tools.memory.read_graph({}),
        ]);
        return { echo, local, remote, entities: (graph as any).entities.length };
    "#;
    let body = execute(fixture, json!({ "code": code, "language": "typescript" })).await;
    assert_eq!(body["ok"], true, "{body}");
    let result = &body["result"];
    assert!(result["echo"].as_str().unwrap().contains("hello"), "{result}");
    assert!(result["local"].to_string().contains('5'), "{result}");
    assert!(result["remote"].to_string().contains("42"), "{result}");
    assert_eq!(result["entities"], 0, "{result}");
    assert_eq!(body["usage"]["host_calls"], 4);
}

#[tokio::test]
async fn a_denied_tool_throws_tool_denied_and_is_recorded() {
    let fixture = fixture();
    let code = "try { await tools.everything.get_env({}); return 'called'; } \
                catch (e) { return { kind: e.kind, message: e.message }; }";
    let body = execute(fixture, json!({ "code": code })).await;
    assert_eq!(body["result"]["kind"], "tool_denied", "{body}");
    let execution = body["execution_id"].as_str().unwrap().to_string();
    let ledger = rusqlite::Connection::open(fixture.server.ledger()).unwrap();
    let outcome: String =
        ledger.query_row("SELECT outcome FROM calls WHERE execution_id = ?1", [&execution], |row| row.get(0)).unwrap();
    assert_eq!(outcome, "tool_denied");
}

#[tokio::test]
async fn an_upstream_is_error_becomes_a_thrown_error_with_its_message() {
    let fixture = fixture();
    // get-sum's input schema requires numbers; the server answers with `isError`.
    let code = "try { await tools.everything.get_sum({ a: 'one', b: 2 }); return 'no error'; } \
                catch (e) { return { kind: e.kind, message: e.message, isError: e instanceof Error }; }";
    let body = execute(fixture, json!({ "code": code })).await;
    let result = &body["result"];
    assert_eq!(result["kind"], "tool_error", "{body}");
    assert_eq!(result["isError"], true, "{body}");
    assert!(result["message"].as_str().unwrap().to_lowercase().contains("number"), "{body}");
    // Uncaught, it ends the execution with the same kind and message.
    let body = execute(fixture, json!({ "code": "await tools.everything.get_sum({ a: 'one', b: 2 })" })).await;
    assert_eq!(body["error"]["kind"], "tool_error", "{body}");
}

#[tokio::test]
async fn a_killed_upstream_fails_its_call_and_is_restarted() {
    let everything = npm_bin("mcp-server-everything");
    let dir = crate::harness::temp_dir("flaky");
    let pid_file = dir.join("pid");
    let config = format!(
        "[mcp.servers.flaky]\ncommand = \"sh\"\nargs = [\"-c\", \"echo $$ > {pid}; exec {bin}\"]\n",
        pid = pid_file.display(),
        bin = everything.display()
    );
    let server = start_server_with(&config, &allow_tools("flaky.*"));
    let base = server.base.clone();
    tokio::task::spawn_blocking({
        let base = base.clone();
        move || wait_for_tools(&base, "", &["flaky.trigger_long_running_operation"])
    })
    .await
    .unwrap();
    let pid = std::fs::read_to_string(&pid_file).unwrap().trim().to_string();

    let call = tokio::spawn({
        let base = base.clone();
        async move {
            let code =
                "await tools.flaky.trigger_long_running_operation({ duration: 20, steps: 4 }); return 'finished'";
            post_as(&base, None, json!({ "code": code })).await
        }
    });
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let killed = Command::new("kill").args(["-9", &pid]).status().unwrap();
    assert!(killed.success());
    let (status, body) = call.await.unwrap();
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["error"]["kind"], "tool_error", "{body}");

    // The next call waits for the restart and succeeds.
    let (_, body) =
        post_as(&base, None, json!({ "code": "return await tools.flaky.echo({ message: 'again' })" })).await;
    assert_eq!(body["ok"], true, "{body}");
    assert!(body["result"].as_str().unwrap().contains("again"), "{body}");
    let new_pid = std::fs::read_to_string(&pid_file).unwrap().trim().to_string();
    assert_ne!(pid, new_pid, "the server process was restarted");
}

#[tokio::test]
async fn typescript_is_stripped_and_errors_point_at_the_submitted_code() {
    let fixture = fixture();
    let code = "type Pair = [number, number];\nconst pair: Pair = [1, 2];\nfunction add(a: number, b?: number): number { return a + (b ?? 0); }\nreturn add(...pair) as number;";
    let body = execute(fixture, json!({ "code": code, "language": "typescript" })).await;
    assert_eq!(body["result"], 3, "{body}");

    let body =
        execute(fixture, json!({ "code": "const a: number = 1;\n\nconst b = a +;\n", "language": "typescript" })).await;
    assert_eq!(body["error"]["kind"], "syntax", "{body}");
    assert_eq!(body["error"]["line"], 3, "{body}");

    let body =
        execute(fixture, json!({ "code": "enum Color { Red }\nreturn Color.Red", "language": "typescript" })).await;
    assert_eq!(body["error"]["kind"], "syntax", "{body}");
    assert!(body["error"]["message"].as_str().unwrap().contains("enum"), "{body}");

    // A runtime error's line is the line of the TypeScript as written.
    let code = "interface A {\n  x: number;\n}\nconst a: A = { x: 1 };\nthrow new Error('line five');";
    let body = execute(fixture, json!({ "code": code, "language": "typescript" })).await;
    assert_eq!(body["error"]["kind"], "exception", "{body}");
    assert_eq!(body["error"]["line"], 5, "{body}");
}

/// Runs `tests/python/mcp_client.py` with `args`, feeding it `calls`; returns its lines.
fn mcp_client(args: &[&str], calls: &Value, env: &[(&str, &str)]) -> Vec<Value> {
    crate::stub::require_python_module("mcp", "mcp");
    let script = format!("{}/tests/python/mcp_client.py", env!("CARGO_MANIFEST_DIR"));
    let mut command = Command::new("python3");
    command.arg(&script).args(args).stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped());
    command.env("NO_PROXY", "127.0.0.1,localhost").env("no_proxy", "127.0.0.1,localhost");
    for (name, value) in env {
        command.env(name, value);
    }
    let mut child = command.spawn().expect("python3 runs");
    {
        use std::io::Write;
        child.stdin.take().unwrap().write_all(calls.to_string().as_bytes()).unwrap();
    }
    let output = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "mcp_client.py {args:?} failed:\n{stdout}\n{stderr}");
    stdout.lines().map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}\n{stderr}"))).collect()
}

fn code_mode_calls() -> Value {
    json!([
        { "tool": "search", "arguments": { "query": "add two numbers sum", "limit": 3 } },
        { "tool": "execute", "arguments": { "code":
            "const [sum, echo] = await Promise.all([\n  tools.everything.get_sum({ a: 19, b: 23 }),\n  tools.remote.echo({ message: 'both' }),\n]);\nconsole.log('got both');\nreturn { sum, echo };" } },
        { "tool": "execute", "arguments": { "code": "return await tools.everything.get_env({})" } },
        { "tool": "execute", "arguments": { "code": "const x: number = ;" } },
        { "tool": "search", "arguments": { "query": "bake a chocolate cake for the party" } },
        { "tool": "execute", "arguments": { "code": "const kept: number = 40", "session": "new" } },
        { "tool": "execute", "arguments": { "code": "kept + 2", "session": "$session" } },
        { "tool": "execute", "arguments": { "language": "python", "code":
            "import asyncio\ntotal, echo = await asyncio.gather(\n    tools.everything.get_sum(a=19, b=23),\n    tools.remote.echo(message='both'),\n)\nprint('got both')\n{'sum': total, 'echo': echo}" } },
        { "tool": "execute", "arguments": { "language": "python", "code": "await tools.everything.get_env()" } },
        { "tool": "execute", "arguments": { "language": "python", "code": "await tools.everything.get_sum(a='not a number', b=1)" } },
        { "tool": "search", "arguments": { "query": "add two numbers sum", "limit": 3, "language": "python" } },
        { "tool": "search", "arguments": {} },
        { "tool": "search", "arguments": { "server": "everything" } },
        { "tool": "search", "arguments": { "query": "Everything" } },
        { "tool": "search", "arguments": { "server": "remote", "query": "say something back" } },
        { "tool": "search", "arguments": { "server": "nowhere" } },
    ])
}

fn check_code_mode_session(lines: &[Value]) {
    if std::env::var_os("SHOW_MCP").is_some() {
        for line in lines {
            eprintln!("{}", serde_json::to_string_pretty(line).unwrap());
        }
    }
    let tools = lines[0]["tools"].as_array().unwrap();
    let names: Vec<&str> = tools.iter().map(|t| t["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["search", "execute"], "{lines:?}");
    assert!(tools[0]["description"].as_str().unwrap().contains("everything"), "servers are listed: {tools:?}");

    let search = &lines[1];
    assert_eq!(search["is_error"], false, "{search}");
    let found: Vec<&str> =
        search["structured"]["tools"].as_array().unwrap().iter().map(|t| t["name"].as_str().unwrap()).collect();
    assert!(found.iter().any(|n| n.ends_with(".get_sum")), "{search}");
    assert!(search["text"][0].as_str().unwrap().contains("function get_sum("), "{search}");

    let execute = &lines[2];
    assert_eq!(execute["is_error"], false, "{execute}");
    let result = &execute["structured"]["result"];
    assert!(result["sum"].to_string().contains("42"), "{execute}");
    assert!(result["echo"].as_str().unwrap().contains("both"), "{execute}");
    assert!(execute["text"].to_string().contains("got both"), "{execute}");
    assert_eq!(execute["logs"], json!(["got both"]), "console lines arrive as log notifications: {execute}");
    assert_eq!(execute["progress"], json!(["got both"]), "and as progress notifications: {execute}");

    let denied = &lines[3];
    assert_eq!(denied["is_error"], true, "{denied}");
    assert!(denied["text"][0].as_str().unwrap().starts_with("tool_denied"), "{denied}");

    let syntax = &lines[4];
    assert_eq!(syntax["is_error"], true, "{syntax}");
    assert_eq!(syntax["structured"]["error"]["kind"], "syntax", "{syntax}");
    assert_eq!(syntax["structured"]["error"]["line"], 1, "{syntax}");

    // A request nothing fits: said so, with the servers and their tools to ask about.
    let vague = &lines[5];
    assert_eq!(vague["is_error"], false, "{vague}");
    assert_eq!(vague["structured"]["match"], "weak", "{vague}");
    let text = vague["text"][0].as_str().unwrap();
    assert!(text.starts_with("Nothing matches") && text.contains("- everything ("), "{text}");
    let servers = vague["structured"]["servers"].as_array().unwrap();
    let everything = servers.iter().find(|s| s["name"] == "everything").unwrap_or_else(|| panic!("{vague}"));
    assert!(everything["tools"].as_array().unwrap().iter().any(|t| t == "get_sum"), "{vague}");

    // A session opened by `execute` keeps what its code declared for the next call.
    let opened = &lines[6];
    assert_eq!(opened["is_error"], false, "{opened}");
    let session = opened["structured"]["session"].as_str().unwrap_or_else(|| panic!("{opened}"));
    assert!(session.starts_with("ses_") && opened["text"].to_string().contains(session), "{opened}");
    let continued = &lines[7];
    assert_eq!(continued["structured"]["result"], 42, "{continued}");
    assert_eq!(continued["structured"]["session"], session, "{continued}");

    // The same in Python: real upstream tools called together, a denied one, an
    // upstream error.
    let python = &lines[8];
    assert_eq!(python["is_error"], false, "{python}");
    let result = &python["structured"]["result"];
    assert!(result["sum"].to_string().contains("42"), "{python}");
    assert!(result["echo"].to_string().contains("both"), "{python}");
    assert_eq!(python["logs"], json!(["got both"]), "{python}");
    let denied = &lines[9];
    assert_eq!(denied["is_error"], true, "{denied}");
    assert_eq!(denied["structured"]["error"]["kind"], "tool_denied", "{denied}");
    assert_eq!(denied["structured"]["error"]["name"], "PermissionError", "{denied}");
    let upstream = &lines[10];
    assert_eq!(upstream["is_error"], true, "{upstream}");
    assert_eq!(upstream["structured"]["error"]["kind"], "tool_error", "{upstream}");
    // `search` in Python mode answers with Python stubs.
    let stubs = &lines[11];
    let text = stubs["text"][0].as_str().unwrap();
    assert!(text.contains("class tools:") && text.contains("async def get_sum(**args: Unpack[GetSumArgs])"), "{text}");
    assert!(text.contains("(**args)`"), "{text}");

    // Browsing: no query lists the servers, what each is for and how many tools.
    let listing = &lines[12];
    assert_eq!(listing["is_error"], false, "{listing}");
    let servers = listing["structured"]["servers"].as_array().unwrap();
    let names: Vec<&str> = servers.iter().map(|s| s["name"].as_str().unwrap()).collect();
    assert!(names.contains(&"everything") && names.contains(&"remote"), "{listing}");
    let everything = servers.iter().find(|s| s["name"] == "everything").unwrap();
    assert!(everything["tool_count"].as_u64().unwrap() > 5, "{listing}");
    assert!(listing["text"][0].as_str().unwrap().contains("- everything ("), "{listing}");
    // A server named lists its tools, each with a phrase; so does a query that is a
    // server's name.
    for browse in [&lines[13], &lines[14]] {
        assert_eq!(browse["structured"]["server"], "everything", "{browse}");
        let tools = browse["structured"]["tools"].as_array().unwrap();
        let sum = tools.iter().find(|t| t["name"] == "get_sum").unwrap_or_else(|| panic!("{browse}"));
        assert!(!sum["phrase"].as_str().unwrap().is_empty(), "{browse}");
        assert_eq!(tools.len() as u64, browse["structured"]["tool_count"].as_u64().unwrap(), "{browse}");
        let text = browse["text"][0].as_str().unwrap();
        assert!(text.contains("- get_sum: ") && !text.contains("declare"), "{text}");
    }
    // A query with a server searches that server only.
    let within = &lines[15];
    let found = within["structured"]["tools"].as_array().unwrap();
    assert!(!found.is_empty(), "{within}");
    assert!(found.iter().all(|t| t["name"].as_str().unwrap().starts_with("tools.remote.")), "{within}");
    // A server the caller may not use (or that does not exist) reads as none, with the list.
    let unknown = &lines[16];
    assert_eq!(unknown["structured"]["unknown_server"], "nowhere", "{unknown}");
    assert!(unknown["text"][0].as_str().unwrap().starts_with("No server named \"nowhere\""), "{unknown}");
}

#[test]
fn the_python_mcp_sdk_drives_code_mode_over_streamable_http() {
    let fixture = fixture();
    let url = format!("{}/mcp", fixture.server.base);
    let lines = mcp_client(&["--http", &url, "--api-key", &fixture.key], &code_mode_calls(), &[]);
    check_code_mode_session(&lines);

    // Without a key the endpoint refuses before any MCP handling.
    let response = std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        runtime.block_on(async {
            client()
                .post(url)
                .header("accept", "application/json, text/event-stream")
                .json(&json!({"jsonrpc": "2.0", "id": 1, "method": "tools/list"}))
                .send()
                .await
                .unwrap()
                .status()
        })
    })
    .join()
    .unwrap();
    assert_eq!(response, StatusCode::UNAUTHORIZED);
}

#[test]
fn the_python_mcp_sdk_drives_code_mode_over_stdio() {
    let fixture = fixture();
    let config = fixture.config.to_str().unwrap();
    let cache = crate::harness::cache_dir();
    let lines = mcp_client(
        &["--stdio", env!("CARGO_BIN_EXE_sandgate"), "mcp", "--config", config],
        &code_mode_calls(),
        &[("SANDGATE_API_KEY", &fixture.key), ("SANDGATE_CACHE_DIR", &cache)],
    );
    check_code_mode_session(&lines);
}

/// An MCP server (rmcp, streamable HTTP, in this process) whose `grow` tool adds a
/// tool and announces it with `notifications/tools/list_changed`.
#[derive(Clone, Default)]
struct Growing {
    added: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

impl Growing {
    fn tool(name: &str) -> rmcp::model::Tool {
        let schema = json!({ "type": "object", "properties": {} });
        let Value::Object(schema) = schema else { unreachable!() };
        rmcp::model::Tool::new(name.to_string(), format!("The tool called {name}"), std::sync::Arc::new(schema))
    }
}

impl rmcp::ServerHandler for Growing {
    fn get_info(&self) -> rmcp::model::ServerConfig {
        rmcp::model::ServerConfig::new(
            rmcp::model::ServerCapabilities::builder().enable_tools().enable_tool_list_changed().build(),
        )
    }

    async fn list_tools(
        &self,
        _request: Option<rmcp::model::PaginatedRequestParams>,
        _context: rmcp::service::RequestContext<rmcp::RoleServer>,
    ) -> Result<rmcp::model::ListToolsResult, rmcp::ErrorData> {
        let mut tools = vec![Self::tool("grow")];
        tools.extend(self.added.lock().unwrap().iter().map(|name| Self::tool(name)));
        Ok(rmcp::model::ListToolsResult::with_all_items(tools))
    }

    async fn call_tool(
        &self,
        request: rmcp::model::CallToolRequestParams,
        context: rmcp::service::RequestContext<rmcp::RoleServer>,
    ) -> Result<rmcp::model::CallToolResponse, rmcp::ErrorData> {
        let text = if request.name == "grow" {
            let name = format!("grown-{}", self.added.lock().unwrap().len() + 1);
            self.added.lock().unwrap().push(name.clone());
            let _ = context.peer.notify_tool_list_changed().await;
            name
        } else {
            format!("called {}", request.name)
        };
        Ok(rmcp::model::CallToolResult::success(vec![rmcp::model::ContentBlock::text(text)]).into())
    }
}

/// An MCP client that signals each `notifications/tools/list_changed`.
struct Watcher(std::sync::Arc<tokio::sync::Notify>);

impl rmcp::ClientHandler for Watcher {
    async fn on_tool_list_changed(&self, _context: rmcp::service::NotificationContext<rmcp::RoleClient>) {
        self.0.notify_one();
    }

    fn get_info(&self) -> rmcp::model::ClientConfig {
        rmcp::model::ClientConfig::default().with_protocol_version(rmcp::model::ProtocolVersion::LATEST_WITH_INITIALIZE)
    }
}

#[tokio::test]
async fn the_catalog_follows_tools_list_changed() {
    use rmcp::transport::streamable_http_server::session::local::LocalSessionManager;
    use rmcp::transport::{StreamableHttpServerConfig, StreamableHttpService};

    let upstream = StreamableHttpService::new(
        || Ok(Growing::default()),
        std::sync::Arc::new(LocalSessionManager::default()),
        StreamableHttpServerConfig::default(),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/mcp", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, axum::Router::new().route_service("/mcp", upstream)).await });

    let config = format!("[mcp.servers.growing]\nurl = \"{url}\"\n");
    let server = start_server_with(&config, &allow_tools("growing.*"));
    let base = server.base.clone();
    let wait = |names: &'static [&'static str]| {
        let base = base.clone();
        tokio::task::spawn_blocking(move || wait_for_tools(&base, "", names))
    };
    wait(&["growing.grow"]).await.unwrap();

    // An MCP client of sandgate hears about the change too (its `search` description
    // counts the tools).
    let changed = std::sync::Arc::new(tokio::sync::Notify::new());
    let transport = rmcp::transport::StreamableHttpClientTransport::from_uri(format!("{base}/mcp"));
    let client = rmcp::ServiceExt::serve(Watcher(changed.clone()), transport).await.unwrap();
    let described = |tools: Vec<rmcp::model::Tool>| tools[0].description.clone().unwrap_or_default().to_string();
    assert!(described(client.peer().list_all_tools().await.unwrap()).contains("growing (1 tools"));

    let (_, body) = post_as(&base, None, json!({ "code": "return await tools.growing.grow({})" })).await;
    assert_eq!(body["result"], "grown-1", "{body}");
    wait(&["growing.grow", "growing.grown_1"]).await.unwrap();
    tokio::time::timeout(Duration::from_secs(10), changed.notified())
        .await
        .expect("tools/list_changed reached the client");
    assert!(described(client.peer().list_all_tools().await.unwrap()).contains("growing (2 tools"));
    let (_, body) = post_as(&base, None, json!({ "code": "return await tools.growing.grown_1()" })).await;
    assert_eq!(body["result"], "called grown-1", "{body}");
}

#[tokio::test]
async fn a_server_that_cannot_start_is_reported_and_its_calls_fail_cleanly() {
    let config = "[mcp]\nconnect_timeout_ms = 2000\n[mcp.servers.missing]\ncommand = \"/nonexistent/mcp-server\"\n";
    let server = start_server_with(config, &allow_tools("missing.*"));
    let base = server.base.clone();
    // The server runs and reports the upstream as down.
    tokio::task::spawn_blocking(move || {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let (status, metrics) = get_text(&format!("{base}/metrics"), "");
            assert_eq!(status, StatusCode::OK);
            if metrics.contains("sandgate_mcp_server_up{server=\"missing\"} 0") {
                return;
            }
            assert!(Instant::now() < deadline, "no down gauge for `missing`:\n{metrics}");
            std::thread::sleep(Duration::from_millis(200));
        }
    })
    .await
    .unwrap();
    let (status, body) =
        post_as(&server.base, None, json!({ "code": "return await tools.missing.anything({})" })).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["error"]["kind"], "tool_error", "{body}");
    assert!(body["error"]["message"].as_str().unwrap().contains("cannot start"), "{body}");
}

#[tokio::test]
async fn oversized_arguments_are_refused_before_the_call() {
    let fixture = fixture();
    let code = "try { await tools.everything.echo({ message: 'x'.repeat(1_100_000) }); return 'sent'; } \
                catch (e) { return { kind: e.kind, message: e.message }; }";
    let body = execute(fixture, json!({ "code": code })).await;
    assert_eq!(body["result"]["kind"], "invalid_request", "{body}");
    assert!(body["result"]["message"].as_str().unwrap().contains("limit is 1048576"), "{body}");
}

/// An rmcp client on the newest protocol revision (2026-07-28: stateless, per-request
/// metadata) runs code through `/mcp` too.
#[tokio::test]
async fn the_newest_protocol_revision_works_over_streamable_http() {
    let fixture = fixture();
    let mut headers = std::collections::HashMap::new();
    headers.insert(
        axum::http::header::AUTHORIZATION,
        axum::http::HeaderValue::from_str(&format!("Bearer {}", fixture.key)).unwrap(),
    );
    let config = rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig::with_uri(format!(
        "{}/mcp",
        fixture.server.base
    ))
    .custom_headers(headers);
    let transport = rmcp::transport::StreamableHttpClientTransport::from_config(config);
    let info = rmcp::model::ClientConfig::default();
    assert_eq!(info.protocol_version, rmcp::model::ProtocolVersion::LATEST);
    let client = rmcp::ServiceExt::serve(info, transport).await.unwrap();
    let tools = client.peer().list_all_tools().await.unwrap();
    assert_eq!(tools.iter().map(|t| t.name.as_ref()).collect::<Vec<_>>(), ["search", "execute"]);
    let arguments = json!({ "code": "const s: unknown = await tools.everything.get_sum({ a: 1, b: 1 }); return s" });
    let Value::Object(arguments) = arguments else { unreachable!() };
    let result = client
        .peer()
        .call_tool(rmcp::model::CallToolRequestParams::new("execute").with_arguments(arguments))
        .await
        .unwrap();
    assert_ne!(result.is_error, Some(true), "{result:?}");
    assert!(result.structured_content.unwrap()["result"].to_string().contains('2'));
}

#[test]
fn sandgate_mcp_refuses_to_start_without_a_valid_key() {
    let fixture = fixture();
    let output = Command::new(env!("CARGO_BIN_EXE_sandgate"))
        .args(["mcp", "--config", fixture.config.to_str().unwrap()])
        .env("SANDGATE_API_KEY", "sg_wrong")
        .env("SANDGATE_CACHE_DIR", crate::harness::cache_dir())
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("SANDGATE_API_KEY"), "{output:?}");
}

#[tokio::test]
async fn a_call_past_its_server_timeout_is_a_tool_error() {
    let config = format!(
        "[mcp.servers.slow]\ncommand = \"{}\"\ncall_timeout_ms = 1000\n",
        npm_bin("mcp-server-everything").display()
    );
    let server = start_server_with(&config, &allow_tools("slow.*"));
    let base = server.base.clone();
    tokio::task::spawn_blocking(move || wait_for_tools(&base, "", &["slow.trigger_long_running_operation"]))
        .await
        .unwrap();
    let code = "try { await tools.slow.trigger_long_running_operation({ duration: 10, steps: 2 }); return 'done' } \
                catch (e) { return { kind: e.kind, message: e.message } }";
    let (_, body) = post_as(&server.base, None, json!({ "code": code })).await;
    assert_eq!(body["result"]["kind"], "tool_error", "{body}");
    assert!(body["result"]["message"].as_str().unwrap().contains("did not answer within 1s"), "{body}");
    // The server stays usable.
    let (_, body) =
        post_as(&server.base, None, json!({ "code": "return await tools.slow.echo({ message: 'still here' })" })).await;
    assert!(body["result"].as_str().unwrap_or_default().contains("still here"), "{body}");
}

const RERANK_POLICY: &str = r#"
[[policy]]
name = "searchers"
principals = ["*"]
except = ["user:poor", "user:modelless"]
[policy.limits]
[policy.tools]
allow = ["everything.*"]
[policy.models]
tiers = ["standard"]

[[policy]]
name = "poor"
principals = ["user:poor"]
[policy.limits]
[policy.tools]
allow = ["everything.*"]
[policy.models]
tiers = ["standard"]
[policy.budget]
scope = "user"
usd_per_day = 0.000000001

[[policy]]
name = "modelless"
principals = ["user:modelless"]
[policy.limits]
[policy.tools]
allow = ["everything.*"]
"#;

/// A server with the `everything` upstream whose `search` reranks with `model` (an
/// upstream of the stub), giving up after `timeout_ms`; keys for three users.
fn rerank_server(stub: &crate::stub::Stub, upstream: &str, timeout_ms: u64) -> (TestServer, Vec<ApiKey>) {
    let keys = vec![
        api_key("ranked", "ranked", "research", "member"),
        api_key("poor", "poor", "research", "member"),
        api_key("modelless", "modelless", "research", "member"),
    ];
    let config = format!(
        r#"
[mcp.servers.everything]
command = "{everything}"
[mcp.search]
rerank = "ranker"
rerank_timeout_ms = {timeout_ms}
[providers.stub]
kind = "openai"
base_url = "{stub}/v1"
api_key_env = "SANDGATE_TEST_STUB_KEY"
[models.ranker]
provider = "stub"
upstream = "{upstream}"
tier = "standard"
input_per_mtok = 1.0
output_per_mtok = 2.0
{entries}"#,
        everything = npm_bin("mcp-server-everything").display(),
        stub = stub.base,
        entries = keys.iter().map(|k| k.entry.as_str()).collect::<String>(),
    );
    std::env::set_var("SANDGATE_TEST_STUB_KEY", "sk-stub-rerank");
    let server = start_server_with(&config, RERANK_POLICY);
    wait_for_tools(&server.base, &keys[0].token, &["everything.echo"]);
    (server, keys)
}

fn search_names(base: &str, key: &str, query: &str) -> (Vec<String>, Value) {
    let calls = json!([{ "tool": "search", "arguments": { "query": query, "limit": 50 } }]);
    let lines = mcp_client(&["--http", &format!("{base}/mcp"), "--api-key", key], &calls, &[]);
    let found = &lines[1];
    assert_eq!(found["is_error"], false, "{found}");
    let names =
        found["structured"]["tools"].as_array().unwrap().iter().map(|t| t["name"].as_str().unwrap().to_string());
    (names.collect(), found.clone())
}

#[test]
fn search_reranks_with_the_callers_own_model_call_and_falls_back_when_it_cannot() {
    let stub = crate::stub::Stub::start();
    let query = "add two numbers and give me the total";
    // The words-and-meaning ranking, as a failing reranker leaves it.
    let (failing, keys) = rerank_server(&stub, "gpt-500", 2_000);
    let (lexical, answer) = search_names(&failing.base, &keys[0].token, query);
    assert!(lexical.len() > 3, "{answer}");
    assert_eq!(answer["structured"]["rerank"]["used"], false, "{answer}");
    let why = answer["structured"]["rerank"]["reason"].as_str().unwrap();
    assert!(why.contains("failed"), "{answer}");
    assert!(answer["text"][0].as_str().unwrap().starts_with("(Not reranked: "), "{answer}");

    // A reranker that turns the order round: its order is the one returned.
    let (ranking, keys) = rerank_server(&stub, "gpt-ok+rerank", 2_000);
    let (reranked, answer) = search_names(&ranking.base, &keys[0].token, query);
    assert_eq!(answer["structured"]["rerank"], json!({"used": true, "model": "ranker"}), "{answer}");
    let mut reversed = lexical.clone();
    reversed.reverse();
    assert_eq!(reranked, reversed, "{answer}");
    // The call is the caller's: in the ledger under their name, its tokens billed.
    let rows = ledger_rows_within(&ranking.ledger(), "SELECT user, model, status FROM model_calls", 1);
    assert_eq!(rows, vec![vec![json!("ranked"), json!("ranker"), json!("ok")]]);
    // Over their budget, or with no grant for the model: the ranking stays, and says why.
    let (kept, answer) = search_names(&ranking.base, &keys[1].token, query);
    assert_eq!(kept, lexical, "{answer}");
    assert!(answer["structured"]["rerank"]["reason"].as_str().unwrap().contains("budget"), "{answer}");
    let (kept, answer) = search_names(&ranking.base, &keys[2].token, query);
    assert_eq!(kept, lexical, "{answer}");
    assert_eq!(answer["structured"]["rerank"]["used"], false, "{answer}");
    let rows = ledger_rows_at(&ranking.ledger(), "SELECT COUNT(*) FROM model_calls WHERE user != 'ranked'");
    assert_eq!(rows, vec![vec![json!(0)]], "refused calls reach no provider");

    // A slow one: given up on within its bound.
    let (slow, keys) = rerank_server(&stub, "gpt-ok+rerank+slow3000", 300);
    let (kept, answer) = search_names(&slow.base, &keys[0].token, query);
    assert_eq!(kept, lexical, "{answer}");
    assert!(answer["structured"]["rerank"]["reason"].as_str().unwrap().contains("within 300 ms"), "{answer}");
}
