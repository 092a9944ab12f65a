//! Session state in the sandbox: a session's code runs as a global script, and the
//! pages of its memory it wrote carry what it declared into the session's next
//! execution.

use std::collections::BTreeMap;
use std::sync::{Arc, OnceLock};

use sandgate::limits::Limits;
use sandgate::request::Language;
use sandgate::sandbox::{Job, MemoryFile, Outcome, Sandbox, SandboxConfig};

use crate::harness::cache_dir;

fn sandbox() -> &'static Sandbox {
    static SANDBOX: OnceLock<Sandbox> = OnceLock::new();
    SANDBOX.get_or_init(|| {
        let mut config: SandboxConfig = sandgate::config::Config::default().sandbox;
        config.cache_dir = Some(cache_dir().into());
        Sandbox::new(config).expect("the sandbox builds")
    })
}

/// A session as the service keeps it: its memory, and every page it kept (as the
/// store would).
struct Session {
    memory: Arc<MemoryFile>,
    pages: BTreeMap<u32, Vec<u8>>,
}

impl Session {
    async fn new(language: Language) -> Self {
        let memory = sandbox().session_memory(language, 0, []).await.expect("a session's memory");
        Self { memory: Arc::new(memory), pages: BTreeMap::new() }
    }

    /// The session made again from its kept pages alone, as after a restart.
    async fn reopened(&self, language: Language) -> Self {
        let pages = self.pages.iter().map(|(page, bytes)| (*page, bytes.as_slice()));
        let memory = sandbox().session_memory(language, self.memory.size(), pages).await.expect("a session's memory");
        Self { memory: Arc::new(memory), pages: self.pages.clone() }
    }

    fn kept_bytes(&self) -> usize {
        self.pages.len() * 4096
    }
}

fn job(code: &str, language: Language, session: Option<&Session>) -> Job {
    Job {
        session: session.map(|session| session.memory.clone()),
        ..Job::new(code, language, Limits { wall_ms: 2_000, ..Limits::default() })
    }
}

async fn run(code: &str, session: Option<&Session>) -> Outcome {
    run_in(Language::Javascript, code, session).await
}

fn run_in(language: Language, code: &str, session: Option<&Session>) -> impl std::future::Future<Output = Outcome> {
    let job = job(code, language, session);
    async move { sandbox().execute(job, None).await.expect("the execution runs") }
}

fn result(outcome: &Outcome) -> String {
    assert!(outcome.ok, "{:?}", outcome.error);
    outcome.result.as_ref().map(|r| r.get().to_string()).unwrap_or_default()
}

/// Keeps what a successful execution in `session` wrote, as the service does.
fn keep(session: &mut Session, outcome: Outcome) {
    let written = outcome.session_image.expect("a session's successful execution gives the pages it wrote");
    session.memory.apply(&written).expect("the memory takes them");
    for (page, bytes) in written.chunks() {
        session.pages.insert(page, bytes.to_vec());
    }
}

/// Runs `code` in `session` and moves the session on.
async fn step(code: &str, session: &mut Session) -> String {
    step_in(Language::Javascript, code, session).await
}

async fn step_in(language: Language, code: &str, session: &mut Session) -> String {
    let outcome = run_in(language, code, Some(session)).await;
    let value = result(&outcome);
    keep(session, outcome);
    value
}

#[tokio::test]
async fn a_session_keeps_what_its_code_declared() {
    let mut session = Session::new(Language::Javascript).await;
    assert_eq!(step("let x = 1", &mut session).await, "null");
    assert_eq!(step("x + 1", &mut session).await, "2");
    assert_eq!(step("const f = (a) => a * 3; class C { m() { return f(x) } }; new C().m()", &mut session).await, "3");
    assert_eq!(step("x = await Promise.resolve(f(10)); x", &mut session).await, "30");
    assert_eq!(
        step("var data = { rows: [1, 2, 3] }; data.rows.push(x); data", &mut session).await,
        r#"{"rows":[1,2,3,30]}"#
    );
    assert_eq!(step("data.rows.reduce((a, b) => a + b, 0)", &mut session).await, "36");

    // Nothing leaks into a fresh execution, or into another session.
    assert_eq!(result(&run("typeof x", None).await), r#""undefined""#);
    assert_eq!(result(&run("typeof x", Some(&Session::new(Language::Javascript).await)).await), r#""undefined""#);
    let fresh = run("let x = 1; return x", None).await;
    assert_eq!(result(&fresh), "1");
    assert!(fresh.session_image.is_none(), "a fresh execution has no session to carry");
}

#[tokio::test]
async fn a_failed_execution_leaves_the_session_where_it_was() {
    let mut session = Session::new(Language::Javascript).await;
    step("let n = 1", &mut session).await;
    let thrown = run("n = 5; throw new Error('boom')", Some(&session)).await;
    assert!(!thrown.ok && thrown.session_image.is_none());
    let error = thrown.error.unwrap();
    assert_eq!((error.kind.as_str(), error.message.as_str(), error.line), ("exception", "boom", Some(1)));
    let syntax = run("let = ;", Some(&session)).await;
    assert_eq!(syntax.error.unwrap().kind.as_str(), "syntax");
    let stopped = run("n = 7; while (true) {}", Some(&session)).await;
    assert!(stopped.session_image.is_none());
    let kind = stopped.error.unwrap().kind;
    assert!(matches!(kind.as_str(), "out_of_fuel" | "timeout"), "{kind}");
    assert_eq!(step("n", &mut session).await, "1", "the state from before the failures");
    // Positions point into the code as submitted.
    let error = run("\n  null.x", Some(&session)).await.error.unwrap();
    assert_eq!((error.line, error.column), (Some(2), Some(3)), "{error:?}");
}

#[tokio::test]
async fn a_session_is_made_again_from_its_pages_and_grows_with_the_heap() {
    let mut session = Session::new(Language::Javascript).await;
    step("let greeting = 'hello'", &mut session).await;
    let small = session.kept_bytes();
    // A trivial step writes a few pages, not the memory.
    let outcome = run("greeting.length", Some(&session)).await;
    let written = outcome.session_image.as_ref().map_or(0, |pages| pages.len());
    assert!(written < 64, "{written} pages written by reading a string");
    keep(&mut session, outcome);
    let mut session = session.reopened(Language::Javascript).await;
    assert_eq!(step("greeting + ' again'", &mut session).await, r#""hello again""#);
    step("globalThis.big = 'ab'.repeat(1 << 20); big.length", &mut session).await;
    let large = session.kept_bytes();
    assert!(large > small + (2 << 20), "{small} then {large} bytes");
    let mut session = session.reopened(Language::Javascript).await;
    assert_eq!(step("big.length + greeting.length", &mut session).await, "2097157");
    println!("session state: {small} bytes after a string, {large} with 2 MiB more");
}

/// After an execution whose pages were kept, the session's instance stays with its
/// memory and runs the next execution; the kernel says which pages each one wrote.
/// Whatever runs in it, the pages kept make the session again exactly.
#[tokio::test]
async fn an_instance_kept_between_executions_carries_exactly_the_sessions_state() {
    for language in [Language::Javascript, Language::Python] {
        let (declare, step_code, grow, read, lose, fail) = match language {
            Language::Python => (
                "n = 0\nlog = []",
                "n += 1\nlog.append(n * 7)\nn",
                "big = 'xy' * (3 << 20)\nn += 1\nlog.append(len(big))\nn",
                "[n, log, len(big)]",
                "n = 1000\nlog.clear()\nn",
                "n = 5\nraise ValueError('no')",
            ),
            _ => (
                "var log = []; let n = 0",
                "n += 1; log.push(n * 7); n",
                "globalThis.big = 'xy'.repeat(3 << 20); n += 1; log.push(big.length); n",
                "[n, log, big.length]",
                "n = 1000; log.length = 0; n",
                "n = 5; throw new Error('no')",
            ),
        };
        let mut session = Session::new(language).await;
        step_in(language, declare, &mut session).await;
        assert!(session.memory.settle_instance(), "{language:?}: the instance stays once its pages are kept");
        for i in 1..=12 {
            // The seventh grows the memory while it runs in the kept instance.
            let code = if i == 7 { grow } else { step_code };
            assert_eq!(step_in(language, code, &mut session).await, i.to_string(), "{language:?}");
            assert!(session.memory.settle_instance(), "{language:?}: step {i} ran in the kept instance");
        }
        let expected = step_in(language, read, &mut session).await;
        assert!(expected.starts_with("[12,[7,14,"), "{language:?}: {expected}");
        // An execution whose pages never go back (the store did not take them): the
        // next one starts from before it, not from the instance it ran in.
        assert_eq!(result(&run_in(language, lose, Some(&session)).await), "1000");
        assert!(!session.memory.settle_instance(), "{language:?}: an instance ahead of the session is dropped");
        assert_eq!(step_in(language, read, &mut session).await, expected, "{language:?}");
        // A failed execution drops the instance it ran in, and changes nothing.
        assert!(session.memory.settle_instance());
        assert!(!run_in(language, fail, Some(&session)).await.ok);
        assert!(!session.memory.settle_instance(), "{language:?}");
        assert_eq!(step_in(language, read, &mut session).await, expected, "{language:?}");
        // Made again from its kept pages alone, the session reads the same.
        let mut again = session.reopened(language).await;
        assert_eq!(step_in(language, read, &mut again).await, expected, "{language:?}");
        assert_eq!(step_in(language, step_code, &mut session).await, "13", "{language:?}");
        assert_eq!(step_in(language, step_code, &mut again).await, "13", "{language:?}");
    }
}

#[tokio::test]
async fn a_top_level_return_gives_the_same_result_in_and_out_of_a_session() {
    let programs = [
        ("let a = 20; return a + 1", "21"),
        ("const rows = [1, 2]; if (rows.length > 1) return rows.length * 10; return 0", "20"),
        ("let hit = null;\nfor (const n of [3, 4, 5]) {\n  if (n % 2 === 0) return n;\n}\nreturn -1", "4"),
        ("try { return 'tried' } finally { globalThis.cleaned = true }", r#""tried""#),
        ("const { x, y: [z] } = { x: 1, y: [2] };\nreturn\nx + z", "null"),
        ("class Box { constructor(v) { this.v = v } }\nfunction twice(n) { return n * 2 }\nreturn twice(new Box(4).v)", "8"),
        ("return await Promise.resolve('later')", r#""later""#),
    ];
    for (code, expected) in programs {
        assert_eq!(result(&run(code, None).await), expected, "fresh: {code}");
        let mut session = Session::new(Language::Javascript).await;
        assert_eq!(step(code, &mut session).await, expected, "in a session: {code}");
    }
    // What a returning snippet declared is there in the session's next execution.
    let mut session = Session::new(Language::Javascript).await;
    assert_eq!(step("const base = 40; function add(n) { return base + n }\nreturn add(1)", &mut session).await, "41");
    assert_eq!(step("add(2)", &mut session).await, "42");
    assert_eq!(step("class K { k() { return base } }\nif (base) return new K().k()", &mut session).await, "40");
    assert_eq!(step("new K().k() + 2", &mut session).await, "42");
    // A return inside a function is the function's, as always.
    assert_eq!(step("const f = () => { return 5 }; f()", &mut session).await, "5");
    // And an error keeps its position in the code as submitted.
    let error = run("let q = 1;\nif (q) return null.x", Some(&session)).await.error.unwrap();
    assert_eq!((error.kind.as_str(), error.line), ("exception", Some(2)), "{error:?}");
}

#[tokio::test]
async fn typescript_runs_in_a_session_too() {
    let mut session = Session::new(Language::Typescript).await;
    let outcome = sandbox()
        .execute(job("let t: number = 4; interface P { x: number }", Language::Typescript, Some(&session)), None)
        .await
        .unwrap();
    result(&outcome);
    keep(&mut session, outcome);
    assert_eq!(step("t * 2", &mut session).await, "8");
}

// ---------------------------------------------------------------------------------
// Over HTTP

use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::harness::{api_key, call, client, start_server_with, ApiKey, TestServer};

const SESSION_POLICY: &str = r#"
[[policy]]
name = "sessions"
principals = ["user:alice", "user:bob"]
[policy.limits]
[policy.tools]
allow = ["test.*"]
[policy.sessions]
max = 2
idle_ttl_s = 600

[[policy]]
name = "no sessions"
principals = ["user:carol"]
[policy.limits]
"#;

struct Sessions {
    server: TestServer,
    alice: String,
    bob: String,
    carol: String,
}

fn server() -> Sessions {
    let ApiKey { token: alice, entry: a } = api_key("alice", "alice", "labs", "member");
    let ApiKey { token: bob, entry: b } = api_key("bob", "bob", "labs", "member");
    let ApiKey { token: carol, entry: c } = api_key("carol", "carol", "labs", "member");
    let config = format!("[sandbox]\ntest_capability = true\n{a}{b}{c}");
    Sessions { server: start_server_with(&config, SESSION_POLICY), alice, bob, carol }
}

async fn execute(base: &str, key: &str, session: &str, code: &str) -> (StatusCode, Value) {
    call(reqwest::Method::POST, format!("{base}/v1/execute"), key, Some(json!({"session_id": session, "code": code})))
        .await
}

#[tokio::test]
async fn sessions_over_http_keep_state_for_their_owner_one_execution_at_a_time() {
    use reqwest::Method;
    let Sessions { server, alice, bob, carol } = server();
    let base = server.base.as_str();
    let (status, opened) = call(Method::POST, format!("{base}/v1/sessions"), &alice, Some(json!({}))).await;
    assert_eq!(status, StatusCode::CREATED, "{opened}");
    let id = opened["session_id"].as_str().unwrap().to_string();
    assert_eq!(opened["language"], "javascript");

    let (status, body) = execute(base, &alice, &id, "let x = 1").await;
    assert_eq!((status, body["ok"].clone(), body["result"].clone()), (StatusCode::OK, json!(true), Value::Null));
    let (_, body) = execute(base, &alice, &id, "x + 1").await;
    assert_eq!(body["result"], 2, "{body}");
    // A failed execution leaves the session as it was.
    let (_, body) = execute(base, &alice, &id, "x = 100; throw new Error('no')").await;
    assert_eq!(body["error"]["kind"], "exception", "{body}");
    let (_, body) = execute(base, &alice, &id, "x").await;
    assert_eq!(body["result"], 1, "{body}");

    // Nobody else can see or use it.
    for (status, body) in [
        call(Method::GET, format!("{base}/v1/sessions/{id}"), &bob, None).await,
        execute(base, &bob, &id, "x").await,
        call(Method::DELETE, format!("{base}/v1/sessions/{id}"), &bob, None).await,
    ] {
        assert_eq!((status, body["error"]["kind"].clone()), (StatusCode::NOT_FOUND, json!("not_found")), "{body}");
    }
    let (_, listed) = call(Method::GET, format!("{base}/v1/sessions"), &bob, None).await;
    assert_eq!(listed["sessions"], json!([]));

    // One execution at a time: a second one meanwhile gets 409.
    let slow = tokio::spawn({
        let (base, alice, id) = (base.to_string(), alice.clone(), id.clone());
        async move { execute(&base, &alice, &id, "await tools.test.sleep({ms: 1500}); x").await }
    });
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    let (status, body) = execute(base, &alice, &id, "x").await;
    assert_eq!((status, body["error"]["kind"].clone()), (StatusCode::CONFLICT, json!("session_busy")), "{body}");
    assert_eq!(slow.await.unwrap().1["result"], 1);

    let (status, shown) = call(Method::GET, format!("{base}/v1/sessions/{id}"), &alice, None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(shown["executions"], 5, "{shown}");
    assert!(shown["state_bytes"].as_u64().unwrap() > 0, "{shown}");

    // Caps from the policy; none without a grant.
    let (status, body) = call(Method::POST, format!("{base}/v1/sessions"), &alice, Some(json!({"ttl_s": 601}))).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    let (status, _) =
        call(Method::POST, format!("{base}/v1/sessions"), &alice, Some(json!({"language": "typescript"}))).await;
    assert_eq!(status, StatusCode::CREATED);
    let (status, body) = call(Method::POST, format!("{base}/v1/sessions"), &alice, Some(json!({}))).await;
    assert_eq!(
        (status, body["error"]["kind"].clone()),
        (StatusCode::TOO_MANY_REQUESTS, json!("rate_limited")),
        "{body}"
    );
    let (status, body) = call(Method::POST, format!("{base}/v1/sessions"), &carol, Some(json!({}))).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");

    // Ended, it is gone.
    let (status, _) = call(Method::DELETE, format!("{base}/v1/sessions/{id}"), &alice, None).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (status, _) = execute(base, &alice, &id, "x").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (_, listed) = call(Method::GET, format!("{base}/v1/sessions"), &alice, None).await;
    assert_eq!(listed["sessions"].as_array().unwrap().len(), 1, "{listed}");

    // The ledger has what happened, attributed to alice.
    let (_, usage) = call(Method::GET, format!("{base}/v1/usage"), &alice, None).await;
    let totals = &usage["totals"];
    assert_eq!(totals["sessions_opened"], 2, "{usage}");
    assert!(totals["session_state_bytes"].as_u64().unwrap() >= shown["state_bytes"].as_u64().unwrap(), "{usage}");
}

/// A session lives in the store: the real binary is stopped and started again
/// between two executions of one session.
#[tokio::test]
async fn a_session_survives_a_restart_of_the_server() {
    use crate::binary::Running;
    let dir = crate::binary::sessions_dir("session-restart");
    let config = dir.join("sandgate.toml");
    let mut server = Running::serve(&["--config", config.to_str().unwrap()]);
    let base = server.base.clone();
    let opened: Value =
        client().post(format!("{base}/v1/sessions")).json(&json!({})).send().await.unwrap().json().await.unwrap();
    let id = opened["session_id"].as_str().unwrap().to_string();
    let run = |base: String, code: &'static str| {
        let id = id.clone();
        async move {
            let body = json!({"session_id": id, "code": code});
            client().post(format!("{base}/v1/execute")).json(&body).send().await.unwrap().json::<Value>().await.unwrap()
        }
    };
    let made = run(base.clone(), "let answer = 41; function ask() { return answer + 1 }").await;
    assert_eq!(made["ok"], true, "{made}");
    server.stop();

    let mut server = Running::serve(&["--config", config.to_str().unwrap()]);
    let asked = run(server.base.clone(), "ask()").await;
    assert_eq!(asked["result"], 42, "{asked}");
    server.stop();
}

/// `sandgate session open|list|show|end` and `sandgate exec --session`, in process as the
/// local user, on the store the configuration names.
#[test]
fn the_cli_opens_uses_and_ends_sessions() {
    let dir = crate::binary::sessions_dir("session-cli");
    let config = dir.join("sandgate.toml");
    let cli = |args: &[&str], stdin: Option<&str>| {
        use std::io::Write;
        let mut command = crate::binary::sandgate();
        command.args(args).arg("--config").arg(&config);
        command
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        let mut child = command.spawn().unwrap();
        child.stdin.take().unwrap().write_all(stdin.unwrap_or("").as_bytes()).unwrap();
        let output = child.wait_with_output().unwrap();
        let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
        (
            output.status.code(),
            serde_json::from_str::<Value>(&stdout).unwrap_or(Value::Null),
            String::from_utf8_lossy(&output.stderr).into_owned(),
        )
    };
    let (code, opened, stderr) = cli(&["session", "open"], None);
    assert_eq!(code, Some(0), "{stderr}");
    let id = opened["session_id"].as_str().unwrap().to_string();
    let (code, ran, stderr) = cli(&["exec", "--session", &id, "-"], Some("let y = 5"));
    assert_eq!(code, Some(0), "{stderr} {ran}");
    let (_, ran, _) = cli(&["exec", "--session", &id, "-"], Some("y * 2"));
    assert_eq!(ran["result"], 10, "{ran}");
    let (_, listed, _) = cli(&["session", "list"], None);
    assert_eq!(listed["sessions"][0]["session_id"], id.as_str(), "{listed}");
    assert_eq!(listed["sessions"][0]["executions"], 2, "{listed}");
    let (code, shown, _) = cli(&["session", "show", &id], None);
    assert_eq!((code, shown["session_id"].as_str()), (Some(0), Some(id.as_str())));
    let (code, _, stderr) = cli(&["session", "end", &id], None);
    assert_eq!(code, Some(0), "{stderr}");
    let (code, ended, _) = cli(&["exec", "--session", &id, "-"], Some("y"));
    assert_eq!(code, Some(2), "{ended}");
    assert_eq!(ended["error"]["kind"], "not_found", "{ended}");
    assert!(ended["error"]["message"].as_str().unwrap().contains("no session"), "{ended}");
}

/// Two replicas on one PostgreSQL, taking turns at one session: each execution
/// starts from the state the last one left, on whichever replica it ran, though each
/// replica keeps the memory of the session's last execution there.
#[tokio::test]
async fn a_session_moves_between_replicas_with_its_latest_state() {
    use reqwest::Method;
    let ApiKey { token: alice, entry } = api_key("alice", "alice", "labs", "member");
    let url = crate::postgres::database().await;
    let config = format!("[sandbox]\ntest_capability = true\n{entry}\n[store]\nurl = \"{url}\"\npool = 4\n");
    let replicas = [start_server_with(&config, SESSION_POLICY), start_server_with(&config, SESSION_POLICY)];
    let (status, opened) =
        call(Method::POST, format!("{}/v1/sessions", replicas[0].base), &alice, Some(json!({}))).await;
    assert_eq!(status, StatusCode::CREATED, "{opened}");
    let id = opened["session_id"].as_str().unwrap().to_string();
    let (_, body) = execute(&replicas[0].base, &alice, &id, "globalThis.rows = []; let n = 0").await;
    assert_eq!(body["ok"], true, "{body}");
    for turn in 1..=6u64 {
        let base = &replicas[(turn % 2) as usize].base;
        let (_, body) = execute(base, &alice, &id, "n += 1; rows.push('x'.repeat(10000)); [n, rows.length]").await;
        assert_eq!(body["result"], json!([turn, turn]), "turn {turn}: {body}");
    }
    // A failure on one replica leaves the other, and itself, where the session was.
    let (_, body) = execute(&replicas[1].base, &alice, &id, "n = 100; throw new Error('no')").await;
    assert_eq!(body["error"]["kind"], "exception", "{body}");
    let (_, body) = execute(&replicas[0].base, &alice, &id, "n").await;
    assert_eq!(body["result"], 6, "{body}");
    let (_, body) = execute(&replicas[1].base, &alice, &id, "n += 1").await;
    assert_eq!(body["result"], 7, "{body}");
    let (_, body) = execute(&replicas[1].base, &alice, &id, "n").await;
    assert_eq!(body["result"], 7, "{body}");
    let (_, body) = execute(&replicas[0].base, &alice, &id, "[n, rows.length]").await;
    assert_eq!(body["result"], json!([7, 6]), "{body}");
}

/// A replica keeps the instances of its 16 most recently used sessions at most,
/// alongside their memories (`/metrics` counts both), and each still carries its
/// session on.
#[tokio::test]
async fn a_replica_keeps_a_bounded_number_of_instances() {
    use crate::binary::Running;
    use crate::harness::call;
    use reqwest::Method;
    let dir = crate::binary::sessions_dir("kept-instances");
    std::fs::write(
        dir.join("policies/all.toml"),
        "[[policy]]\nname = \"all\"\nprincipals = [\"*\"]\n[policy.limits]\n[policy.sessions]\nmax = 32\n",
    )
    .unwrap();
    let config = dir.join("sandgate.toml");
    let server = Running::serve(&["--config", config.to_str().unwrap()]);
    let base = server.base.clone();
    let gauge = |text: &str, name: &str| -> f64 {
        let line = text.lines().find(|line| line.split_whitespace().next() == Some(name));
        line.and_then(|line| line.split_whitespace().nth(1)).and_then(|value| value.parse().ok()).unwrap_or(-1.0)
    };
    let mut ids = Vec::new();
    for i in 0..20 {
        let (status, opened) = call(Method::POST, format!("{base}/v1/sessions"), "", Some(json!({}))).await;
        assert_eq!(status, StatusCode::CREATED, "{opened}");
        let id = opened["session_id"].as_str().unwrap().to_string();
        for code in [format!("let n = {i}"), "n += 100; n".to_string()] {
            let body = json!({"session_id": id, "code": code});
            let (status, ran) = call(Method::POST, format!("{base}/v1/execute"), "", Some(body)).await;
            assert_eq!((status, ran["ok"].clone()), (StatusCode::OK, json!(true)), "{ran}");
        }
        ids.push(id);
    }
    let metrics = crate::harness::client().get(format!("{base}/metrics")).send().await.unwrap().text().await.unwrap();
    assert_eq!(gauge(&metrics, "sandgate_session_memories"), 20.0, "{metrics}");
    assert_eq!(gauge(&metrics, "sandgate_session_instances"), 16.0, "{metrics}");
    // Every session goes on from its own state, kept instance or not.
    for (i, id) in ids.iter().enumerate() {
        let body = json!({"session_id": id, "code": "n"});
        let (_, ran) = call(Method::POST, format!("{base}/v1/execute"), "", Some(body)).await;
        assert_eq!(ran["result"], json!(i + 100), "{ran}");
    }
}
