//! What one hostile caller can make the newer surfaces hold or do: console lines,
//! uploads and downloads, token counting, ownership, the console's cookie and live
//! stream, file reads, and the smaller guarantees around them. Memory is measured on
//! the real binary (its resident set before and after); stalls as the slowest
//! `/healthz` answer while the load runs.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

use crate::binary::{sandgate, start, Running};
use crate::harness::{api_key, call, client, temp_dir, ApiKey};

/// A served binary with its own directory, policies and keys.
struct Served {
    server: Running,
    base: String,
    dir: PathBuf,
}

impl Served {
    fn pid(&self) -> u32 {
        self.server.child.id()
    }
}

/// Serves the binary with `policy` and `config` (appended to the configuration, which
/// already names the policies, a ledger and a scratch directory of its own).
fn serve(label: &str, config: &str, policy: &str) -> Served {
    serve_in(temp_dir(label), "", config, policy)
}

/// [`serve`] in `dir`, with `sandbox` lines added to the `[sandbox]` table.
fn serve_in(dir: PathBuf, sandbox: &str, config: &str, policy: &str) -> Served {
    std::fs::create_dir_all(dir.join("policies")).unwrap();
    std::fs::write(dir.join("policies/all.toml"), policy).unwrap();
    let path = dir.join("sandgate.toml");
    std::fs::write(
        &path,
        format!(
            "policies = \"policies\"\n[ledger]\npath = \"ledger.db\"\n\
             [sandbox]\ntest_capability = true\nscratch_dir = \"scratch\"\n{sandbox}\n{config}"
        ),
    )
    .unwrap();
    let mut command = sandgate();
    command
        .env("SANDGATE_LEDGER", dir.join("ledger.db"))
        .args(["serve", "--listen", "127.0.0.1:0", "--config"])
        .arg(&path);
    let (child, base) = start(command);
    Served { server: Running { child, base: base.clone() }, base, dir }
}

/// The resident set of process `pid`, in bytes.
fn rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse::<u64>().unwrap() * 1024
}

/// Polls `/healthz` every 50 ms until `done`; returns the slowest answer.
fn watch_health(base: String, done: Arc<AtomicBool>) -> tokio::task::JoinHandle<Duration> {
    tokio::spawn(async move {
        let mut worst = Duration::ZERO;
        let client = client();
        while !done.load(Ordering::Relaxed) {
            let asked = Instant::now();
            let answer = client.get(format!("{base}/healthz")).timeout(Duration::from_secs(30)).send().await;
            assert!(answer.is_ok_and(|a| a.status() == StatusCode::OK), "/healthz failed under load");
            worst = worst.max(asked.elapsed());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        worst
    })
}

const EVERYONE: &str = r#"
[[policy]]
name = "everyone"
principals = ["*"]
[policy.limits]
[policy.tools]
allow = ["test.*"]
[policy.sessions]
"#;

async fn execute(base: &str, key: &str, body: Value) -> (StatusCode, Value) {
    call(Method::POST, format!("{base}/v1/execute"), key, Some(body)).await
}

// 1. Console lines ------------------------------------------------------------------

#[tokio::test]
async fn empty_console_lines_are_charged_so_endless_printing_ends_at_the_output_cap() {
    let ApiKey { token, entry } = api_key("k", "mallory", "t", "member");
    let served = serve("lines", &entry, EVERYONE);
    let base = &served.base;
    for (language, code) in [("javascript", "for (;;) console.log('')"), ("python", "while True:\n    print()")] {
        let (status, body) = execute(base, &token, json!({ "code": code, "language": language })).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body["error"]["kind"], "output_limit", "{language}: {body}");
        let lines = body["logs"].as_array().unwrap().len();
        // 64 KiB of output at 32 bytes a line, and the `[truncated]` marker.
        assert!(lines <= (64 << 10) / 32 + 1, "{language}: {lines} lines");
    }

    // Four such runs in the background: the server's memory barely moves, and a
    // stored result is small and served as it was stored.
    let before = rss(served.pid());
    let mut ids = Vec::new();
    for _ in 0..4 {
        let (status, started) = call(
            Method::POST,
            format!("{base}/v1/executions"),
            &token,
            Some(json!({ "code": "for (;;) console.log('')" })),
        )
        .await;
        assert_eq!(status, StatusCode::ACCEPTED, "{started}");
        ids.push(started["execution_id"].as_str().unwrap().to_string());
    }
    for id in &ids {
        loop {
            let (_, view) = call(Method::GET, format!("{base}/v1/executions/{id}"), &token, None).await;
            if view["status"] != "running" {
                assert_eq!(view["result"]["error"]["kind"], "output_limit", "{view}");
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let asked = Instant::now();
        let response = client().get(format!("{base}/v1/executions/{id}")).bearer_auth(&token).send().await.unwrap();
        let text = response.text().await.unwrap();
        assert!(text.len() < 256 << 10, "a stored result of {} bytes", text.len());
        assert!(asked.elapsed() < Duration::from_secs(2));
    }
    let grown = rss(served.pid()).saturating_sub(before);
    assert!(grown < 64 << 20, "resident memory grew by {grown} bytes");
}

#[tokio::test]
async fn a_stream_that_falls_behind_misses_lines_but_the_result_keeps_them() {
    use sandgate::limits::Limits;
    use sandgate::request::Language;
    use sandgate::sandbox::{Job, Sandbox, LINE_BUFFER};
    let mut config: sandgate::sandbox::SandboxConfig = sandgate::config::Config::default().sandbox;
    config.cache_dir = Some(crate::harness::cache_dir().into());
    let sandbox = Sandbox::new(config).unwrap();
    let job =
        Job::new("for (let i = 0; i < 1000; i++) console.log(i); return 1", Language::Javascript, Limits::default());
    // Nobody reads the stream while the code runs.
    let (lines, mut unread) = tokio::sync::mpsc::channel(LINE_BUFFER);
    let outcome = sandbox.execute(job, Some(lines)).await.unwrap();
    assert_eq!(outcome.logs.len(), 1000, "the result has every line");
    let mut streamed = 0;
    while unread.try_recv().is_ok() {
        streamed += 1;
    }
    assert_eq!(streamed, LINE_BUFFER, "the stream holds at most its buffer");
}

// 2. Uploads and downloads -----------------------------------------------------------

const NO_SESSIONS: &str = r#"
[[policy]]
name = "alice"
principals = ["user:alice"]
[policy.limits]
[policy.sessions]
[policy.files]
max_bytes = 67108864

[[policy]]
name = "mallory"
principals = ["user:mallory"]
[policy.limits]
"#;

async fn open_session(base: &str, key: &str) -> String {
    let (status, opened) = call(Method::POST, format!("{base}/v1/sessions"), key, Some(json!({}))).await;
    assert_eq!(status, StatusCode::CREATED, "{opened}");
    opened["session_id"].as_str().unwrap().to_string()
}

/// A body of `size` bytes that takes `pace` between 64 KiB chunks, and counts what
/// the server took of it.
fn slow_body(size: usize, pace: Duration, sent: Arc<AtomicU64>) -> reqwest::Body {
    let chunks = futures::stream::unfold(0usize, move |at| {
        let sent = sent.clone();
        async move {
            if at >= size {
                return None;
            }
            tokio::time::sleep(pace).await;
            let n = (size - at).min(64 << 10);
            sent.fetch_add(n as u64, Ordering::Relaxed);
            Some((Ok::<_, std::io::Error>(bytes::Bytes::from(vec![b'x'; n])), at + n))
        }
    });
    reqwest::Body::wrap_stream(chunks)
}

#[tokio::test]
async fn uploads_are_checked_before_their_body_is_read_and_streamed_to_disk() {
    let ApiKey { token: alice, entry: a } = api_key("alice", "alice", "labs", "member");
    let ApiKey { token: mallory, entry: m } = api_key("mallory", "mallory", "labs", "member");
    let served = serve("uploads", &format!("{a}{m}"), NO_SESSIONS);
    let base = served.base.clone();
    let session = open_session(&base, &alice).await;

    // Forty 60 MiB uploads from a key with no sessions grant, each body trickling in:
    // every one is refused at once, and the server holds none of it.
    let before = rss(served.pid());
    let uploads = (0..40).map(|i| {
        let (base, mallory, session) = (base.clone(), mallory.clone(), session.clone());
        async move {
            let sent = Arc::new(AtomicU64::new(0));
            let asked = Instant::now();
            let response = client()
                .put(format!("{base}/v1/sessions/{session}/files/f{i}.bin"))
                .bearer_auth(&mallory)
                .header("content-type", "application/octet-stream")
                .header("content-length", (60u64 << 20).to_string())
                .body(slow_body(60 << 20, Duration::from_millis(50), sent.clone()))
                .send()
                .await;
            // The server answers before the body is sent (the client may see the
            // connection closed under its unsent body instead).
            if let Ok(response) = response {
                assert_eq!(response.status(), StatusCode::FORBIDDEN);
            }
            assert!(asked.elapsed() < Duration::from_secs(10), "answered after {:?}", asked.elapsed());
            sent.load(Ordering::Relaxed)
        }
    });
    let sent: Vec<u64> = futures::future::join_all(uploads).await;
    let grown = rss(served.pid()).saturating_sub(before);
    assert!(grown < 64 << 20, "resident memory grew by {grown} bytes for refused uploads");
    assert!(sent.iter().all(|s| *s < 16 << 20), "bodies were read: {sent:?}");

    // Another principal's session is a 404 before the body too.
    let (status, _) = call(Method::PUT, format!("{base}/v1/sessions/{session}/files/x"), &mallory, None).await;
    assert_eq!(status, StatusCode::FORBIDDEN);

    // The owner's uploads stream to disk: four of 24 MiB at once barely move memory.
    let before = rss(served.pid());
    let uploads = (0..4).map(|i| {
        let (base, alice, session) = (base.clone(), alice.clone(), session.clone());
        async move {
            let response = client()
                .put(format!("{base}/v1/sessions/{session}/files/big{i}.bin"))
                .bearer_auth(&alice)
                .header("content-type", "application/octet-stream")
                .body(slow_body(12 << 20, Duration::from_millis(2), Arc::new(AtomicU64::new(0))))
                .send()
                .await
                .unwrap();
            response.status()
        }
    });
    let statuses = futures::future::join_all(uploads).await;
    // One session takes one upload at a time: the others are busy (409).
    assert!(statuses.contains(&StatusCode::CREATED), "{statuses:?}");
    assert!(statuses.iter().all(|s| *s == StatusCode::CREATED || *s == StatusCode::CONFLICT), "{statuses:?}");
    let grown = rss(served.pid()).saturating_sub(before);
    assert!(grown < 48 << 20, "resident memory grew by {grown} bytes for streamed uploads");

    // Past the quota, a body without a declared length is refused as it arrives.
    let response = client()
        .put(format!("{base}/v1/sessions/{session}/files/huge.bin"))
        .bearer_auth(&alice)
        .header("content-type", "application/octet-stream")
        .body(slow_body(80 << 20, Duration::ZERO, Arc::new(AtomicU64::new(0))))
        .send()
        .await;
    if let Ok(response) = response {
        assert_eq!(response.status(), StatusCode::PAYLOAD_TOO_LARGE);
        let body: Value = response.json().await.unwrap();
        assert!(body["error"]["message"].as_str().unwrap().starts_with("EDQUOT"), "{body}");
    }
    let (_, files) = call(Method::GET, format!("{base}/v1/sessions/{session}/files"), &alice, None).await;
    assert!(!files.to_string().contains("huge.bin"), "{files}");
}

#[tokio::test]
async fn downloads_stream_a_chunk_at_a_time_and_each_principal_has_a_few_at_once() {
    let ApiKey { token: alice, entry: a } = api_key("alice", "alice", "labs", "member");
    let served = serve("downloads", &a, NO_SESSIONS);
    let base = served.base.clone();
    let session = open_session(&base, &alice).await;
    let data: Vec<u8> = (0..(32usize << 20)).map(|i| (i % 253) as u8).collect();
    let response = client()
        .put(format!("{base}/v1/sessions/{session}/files/data.bin"))
        .bearer_auth(&alice)
        .header("content-type", "application/octet-stream")
        .body(data.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::CREATED);

    // Four slow readers of 32 MiB: the server holds a chunk or so of each.
    let before = rss(served.pid());
    let mut readers = Vec::new();
    for _ in 0..4 {
        let response = client()
            .get(format!("{base}/v1/sessions/{session}/files/data.bin"))
            .bearer_auth(&alice)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(response.content_length(), Some(32 << 20));
        readers.push(response);
    }
    // A fifth at once is one too many.
    let (status, refused) =
        call(Method::GET, format!("{base}/v1/sessions/{session}/files/data.bin"), &alice, None).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{refused}");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let grown = rss(served.pid()).saturating_sub(before);
    assert!(grown < 32 << 20, "resident memory grew by {grown} bytes for four readers");
    // Each reads the file whole, as written.
    let first = readers.remove(0);
    let mut stream = first.bytes_stream();
    let mut read = Vec::new();
    while let Some(chunk) = stream.next().await {
        read.extend_from_slice(&chunk.unwrap());
    }
    assert!(read == data, "the download is the file");
    drop(readers);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (status, _) = call(Method::GET, format!("{base}/v1/sessions/{session}/files/data.bin"), &alice, None).await;
    assert_eq!(status, StatusCode::OK, "the places are free again");
}

// 3. Token counting -------------------------------------------------------------------

#[tokio::test]
async fn counting_tokens_of_huge_requests_never_stalls_the_server() {
    let stub = crate::stub::Stub::start();
    let ApiKey { token, entry } = api_key("k", "mallory", "t", "member");
    let policy = r#"
[[policy]]
name = "everyone"
principals = ["*"]
[policy.limits]
wall_ms = 60000
[policy.models]
tiers = ["economy"]
"#;
    let config = format!(
        "{entry}\n[http]\nmax_body_bytes = 10000000\n{}",
        stub.openai_config("SANDGATE_SURFACES_PROVIDER_KEY", &[("cheap", "gpt-cheap-ok", "economy")])
    );
    std::env::set_var("SANDGATE_SURFACES_PROVIDER_KEY", "sk-stub");
    let served = serve("tokens", &config, policy);
    let base = served.base.clone();
    let done = Arc::new(AtomicBool::new(false));
    let health = watch_health(base.clone(), done.clone());

    // Twenty model calls of one 1 MB "word" each, from one execution...
    let code = "const word = 'a'.repeat(1_000_000);\n\
                const calls = [];\n\
                for (let i = 0; i < 20; i++) calls.push(model.chat({ model: 'cheap', max_tokens: 5, messages: [{ role: 'user', content: word }] }));\n\
                return (await Promise.all(calls)).length";
    let run = execute(&base, &token, json!({ "code": code, "limits": { "wall_ms": 60000 } }));
    // ...and four 8 MB requests to the proxy at the same time.
    let big = "b".repeat(8 << 20);
    let proxied = (0..4).map(|_| {
        call(
            Method::POST,
            format!("{base}/v1/chat/completions"),
            &token,
            Some(json!({ "model": "cheap", "max_tokens": 5, "messages": [{ "role": "user", "content": big }] })),
        )
    });
    let ((status, body), answers) = tokio::join!(run, futures::future::join_all(proxied));
    done.store(true, Ordering::Relaxed);
    let worst = health.await.unwrap();
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["result"], 20, "{body}");
    assert!(answers.iter().all(|(status, _)| *status == StatusCode::OK), "{answers:?}");
    assert!(worst < Duration::from_millis(1500), "/healthz took {worst:?} while tokens were counted");
}

// 4. Ownership --------------------------------------------------------------------------

#[tokio::test]
async fn sessions_and_background_runs_belong_to_the_whole_principal_and_need_the_sessions_grant() {
    let policy = r#"
[[policy]]
name = "labs"
principals = ["team:labs", "team:ops"]
[policy.limits]
[policy.tools]
allow = ["test.*"]
[policy.sessions]

[[policy]]
name = "no sessions"
principals = ["key:plain"]
[policy.limits]
[policy.tools]
allow = ["test.*"]
"#;
    let ApiKey { token: first, entry: a } = api_key("alice-labs", "alice", "labs", "member");
    let ApiKey { token: second, entry: b } = api_key("alice-ops", "alice", "ops", "member");
    let ApiKey { token: plain, entry: c } = api_key("plain", "alice", "guests", "member");
    let served = serve("owners", &format!("{a}{b}{c}"), policy);
    let base = served.base.clone();
    let session = open_session(&base, &first).await;
    let (status, body) =
        execute(&base, &first, json!({ "code": "globalThis.n = 1; return 1", "session_id": session })).await;
    assert_eq!((status, &body["ok"]), (StatusCode::OK, &json!(true)), "{body}");
    let (status, body) = call(Method::PUT, format!("{base}/v1/sessions/{session}/files/a.txt"), &first, None).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");

    // The same user with another key, in another team, is someone else.
    let (status, _) = execute(&base, &second, json!({ "code": "return n", "session_id": session })).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, listed) = call(Method::GET, format!("{base}/v1/sessions"), &second, None).await;
    assert_eq!((status, listed["sessions"].as_array().map(Vec::len)), (StatusCode::OK, Some(0)), "{listed}");
    for (method, path) in [
        (Method::GET, format!("/v1/sessions/{session}")),
        (Method::GET, format!("/v1/sessions/{session}/files")),
        (Method::GET, format!("/v1/sessions/{session}/files/a.txt")),
        (Method::PUT, format!("/v1/sessions/{session}/files/planted.txt")),
        (Method::DELETE, format!("/v1/sessions/{session}/files/a.txt")),
        (Method::DELETE, format!("/v1/sessions/{session}")),
    ] {
        let (status, body) = call(method.clone(), format!("{base}{path}"), &second, None).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{method} {path}: {body}");
        // A key whose policies grant no sessions is refused every session route.
        let (status, body) = call(method.clone(), format!("{base}{path}"), &plain, None).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{method} {path}: {body}");
        assert_eq!(body["error"]["kind"], "forbidden", "{body}");
    }
    let (status, _) = call(Method::GET, format!("{base}/v1/sessions"), &plain, None).await;
    assert_eq!(status, StatusCode::FORBIDDEN);

    // A background run is its starter's alone.
    let (status, started) = call(
        Method::POST,
        format!("{base}/v1/executions"),
        &first,
        Some(json!({ "code": "await tools.test.sleep({ ms: 2000 }); return 1" })),
    )
    .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{started}");
    let id = started["execution_id"].as_str().unwrap();
    for key in [&second, &plain] {
        let (status, _) = call(Method::GET, format!("{base}/v1/executions/{id}"), key, None).await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        let (status, _) = call(Method::DELETE, format!("{base}/v1/executions/{id}"), key, None).await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        let (status, _) = call(Method::GET, format!("{base}/v1/executions/{id}/events"), key, None).await;
        assert_eq!(status, StatusCode::NOT_FOUND);
    }
    let (_, view) = call(Method::GET, format!("{base}/v1/executions/{id}"), &first, None).await;
    assert_eq!(view["status"], "running", "{view}");
}

// 5. The console's cookie ------------------------------------------------------------

async fn sign_in(base: &str, key: &str) -> String {
    let response = client()
        .post(format!("{base}/ui/login"))
        .header("content-type", "application/json")
        .body(json!({ "key": key }).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::NO_CONTENT);
    let cookie = response.headers().get("set-cookie").unwrap().to_str().unwrap().to_string();
    cookie.split(';').next().unwrap().to_string()
}

/// Who the console says is signed in with `cookie`, or `None` when it sends the
/// browser to sign in.
async fn console_viewer(base: &str, cookie: &str) -> Option<String> {
    let response = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
        .get(format!("{base}/ui/sessions"))
        .header("cookie", cookie)
        .send()
        .await
        .unwrap();
    if response.status().is_redirection() {
        return None;
    }
    assert_eq!(response.status(), StatusCode::OK);
    let page = response.text().await.unwrap();
    let start = page.find("id=\"viewer\">").map(|at| at + 12).unwrap_or(0);
    Some(page[start..].chars().take(80).collect())
}

#[tokio::test]
async fn a_console_cookie_is_bound_to_its_key_and_ends_on_sign_out() {
    let ApiKey { token: admin, entry } = api_key("root", "root", "ops", "admin");
    let served = serve("cookies", &entry, EVERYONE);
    let base = served.base.clone();
    let config = served.dir.join("sandgate.toml");
    let key = |args: &[&str]| {
        let output = sandgate()
            .env("SANDGATE_LEDGER", served.dir.join("ledger.db"))
            .args(["key"])
            .args(args)
            .args(["--config", config.to_str().unwrap()])
            .output()
            .unwrap();
        (
            output.status.success(),
            String::from_utf8_lossy(&output.stdout).trim().to_string(),
            String::from_utf8_lossy(&output.stderr).to_string(),
        )
    };
    let (created, member, _) = key(&["create", "--user", "mia", "--team", "labs", "--name", "shared", "--in", "store"]);
    assert!(created);
    tokio::time::sleep(Duration::from_secs(3)).await;
    let cookie = sign_in(&base, &member).await;
    let shown = console_viewer(&base, &cookie).await.expect("signed in");
    assert!(shown.contains("mia"), "{shown}");

    // Revoked, and an admin key under the same name refused: the old cookie never
    // becomes the admin.
    let (revoked, _, _) = key(&["revoke", "shared"]);
    assert!(revoked);
    let (again, _, why) =
        key(&["create", "--user", "root", "--team", "ops", "--name", "shared", "--role", "admin", "--in", "store"]);
    assert!(!again, "a revoked key's name is reserved");
    assert!(why.contains("reserved"), "{why}");
    let (in_config, _, why) = key(&["create", "--user", "x", "--team", "ops", "--name", "root", "--in", "store"]);
    assert!(!in_config, "the configuration has a key named root: {why}");
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(console_viewer(&base, &cookie).await, None, "the revoked key's cookie signs in no one");

    // Sign-out ends the sign-in on the server: a copy of the cookie is worth nothing.
    let cookie = sign_in(&base, &admin).await;
    assert!(console_viewer(&base, &cookie).await.is_some());
    let response = client()
        .post(format!("{base}/ui/logout"))
        .header("cookie", &cookie)
        .header("content-type", "application/json")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::NO_CONTENT);
    assert_eq!(console_viewer(&base, &cookie).await, None, "a copied cookie after sign-out");
}

// 6. The console's live stream ----------------------------------------------------------

#[tokio::test]
async fn console_streams_are_capped_per_principal_and_count_exactly() {
    let ApiKey { token, entry } = api_key("k", "mia", "labs", "member");
    let served = serve("pulse", &entry, EVERYONE);
    let base = served.base.clone();
    for _ in 0..7 {
        let (status, _) = execute(&base, &token, json!({ "code": "return 1" })).await;
        assert_eq!(status, StatusCode::OK);
    }
    let (status, _) = execute(&base, &token, json!({ "code": "throw new Error('x')" })).await;
    assert_eq!(status, StatusCode::OK);
    let cookie = sign_in(&base, &token).await;
    let mut streams = Vec::new();
    for _ in 0..4 {
        let response = client().get(format!("{base}/ui/events")).header("cookie", &cookie).send().await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        streams.push(response);
    }
    let refused = client().get(format!("{base}/ui/events")).header("cookie", &cookie).send().await.unwrap();
    assert_eq!(refused.status(), StatusCode::TOO_MANY_REQUESTS);
    // The figures are exact counts of this member's executions.
    let mut first = streams.remove(0).bytes_stream();
    let mut text = String::new();
    while !text.contains("\n\n") || !text.contains("event: pulse") {
        let chunk = tokio::time::timeout(Duration::from_secs(10), first.next()).await.unwrap().unwrap().unwrap();
        text.push_str(&String::from_utf8_lossy(&chunk));
    }
    let data = text.lines().find_map(|l| l.strip_prefix("data: ")).unwrap();
    let pulse: Value = serde_json::from_str(data).unwrap();
    assert_eq!((pulse["executions"].as_u64(), pulse["errors"].as_u64()), (Some(8), Some(1)), "{pulse}");
    drop((first, streams));
    tokio::time::sleep(Duration::from_millis(300)).await;
    let again = client().get(format!("{base}/ui/events")).header("cookie", &cookie).send().await.unwrap();
    assert_eq!(again.status(), StatusCode::OK, "closed streams free their places");

    // Every console page says what the browser may run and frame.
    let page = client().get(format!("{base}/ui")).header("cookie", &cookie).send().await.unwrap();
    let headers = page.headers();
    let csp = headers.get("content-security-policy").unwrap().to_str().unwrap();
    assert!(csp.contains("frame-ancestors 'none'") && csp.contains("script-src 'self'"), "{csp}");
    assert_eq!(headers.get("x-content-type-options").unwrap(), "nosniff");
}

// 7. File reads ------------------------------------------------------------------------

#[tokio::test]
async fn a_file_read_that_cannot_fit_the_reply_is_refused_from_its_size() {
    let ApiKey { token, entry } = api_key("k", "mia", "labs", "member");
    let dir = temp_dir("big-mount");
    std::fs::write(dir.join("big.bin"), vec![7u8; 60 << 20]).unwrap();
    let policy = format!(
        "{EVERYONE}[policy.files]\nmax_bytes = 104857600\nmounts = [{{ path = \"{}\", as = \"data\", mode = \"ro\" }}]\n",
        dir.display()
    );
    let served = serve("readfile", &entry, &policy);
    let asked = Instant::now();
    let before = rss(served.pid());
    let reads = (0..8).map(|_| {
        execute(
            &served.base,
            &token,
            json!({ "code": "return (await fs.readFile('data/big.bin', { encoding: 'base64' })).length" }),
        )
    });
    for (status, body) in futures::future::join_all(reads).await {
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body["error"]["kind"], "output_limit", "{body}");
        assert!(body["error"]["message"].as_str().unwrap().contains("62914560 bytes"), "{body}");
    }
    assert!(asked.elapsed() < Duration::from_secs(5), "{:?}", asked.elapsed());
    let grown = rss(served.pid()).saturating_sub(before);
    assert!(grown < 64 << 20, "resident memory grew by {grown} bytes");
}

// 8. The smaller guarantees ----------------------------------------------------------------

#[tokio::test]
async fn workspace_copies_are_private_and_stale_ones_go_at_start() {
    let ApiKey { token, entry } = api_key("k", "mia", "labs", "member");
    let dir = temp_dir("scratch-owner");
    // What a killed process left behind (no process has this pid).
    let stale = dir.join("scratch/4194304.dead/ws-old");
    std::fs::create_dir_all(&stale).unwrap();
    let served = serve_in(dir.clone(), "", &entry, EVERYONE);
    assert!(!stale.exists(), "a dead process's scratch directory is removed at start");
    let session = open_session(&served.base, &token).await;
    let code = "await fs.writeFile('secret.txt', 'hush'); await tools.test.sleep({ ms: 1500 }); return 1";
    let run = execute(&served.base, &token, json!({ "code": code, "session_id": session }));
    let look = async {
        tokio::time::sleep(Duration::from_millis(700)).await;
        use std::os::unix::fs::PermissionsExt;
        let mine =
            std::fs::read_dir(dir.join("scratch")).unwrap().flatten().next().expect("the process's directory").path();
        assert_eq!(std::fs::metadata(&mine).unwrap().permissions().mode() & 0o777, 0o700);
        let copy =
            std::fs::read_dir(&mine).unwrap().flatten().find(|e| e.file_name().to_string_lossy().starts_with("ws-"));
        let copy = copy.expect("the execution's workspace copy").path();
        assert_eq!(std::fs::metadata(&copy).unwrap().permissions().mode() & 0o777, 0o700);
        assert!(copy.join("secret.txt").exists());
    };
    let ((status, body), ()) = tokio::join!(run, look);
    assert_eq!((status, &body["ok"]), (StatusCode::OK, &json!(true)), "{body}");
}

#[tokio::test]
async fn concurrent_saves_cannot_pass_a_users_session_bytes_together() {
    let ApiKey { token, entry } = api_key("k", "mia", "labs", "member");
    let policy = r#"
[[policy]]
name = "everyone"
principals = ["*"]
[policy.limits]
[policy.sessions]
max_bytes = 12000000
"#;
    let served = serve("session-cap", &entry, policy);
    let base = served.base.clone();
    let mut sessions = Vec::new();
    for _ in 0..3 {
        sessions.push(open_session(&base, &token).await);
    }
    // Each keeps about 5 MB: two fit under 12 MB, three do not.
    let code = "globalThis.keep = new Uint8Array(5_000_000).fill(7); return keep.length";
    let runs = sessions.iter().map(|id| execute(&base, &token, json!({ "code": code, "session_id": id })));
    let results = futures::future::join_all(runs).await;
    let kept = results.iter().filter(|(_, body)| body["ok"] == true).count();
    let refused: Vec<&Value> = results.iter().map(|(_, body)| body).filter(|body| body["ok"] == false).collect();
    assert_eq!(kept, 2, "{results:?}");
    assert_eq!(refused[0]["error"]["kind"], "out_of_memory", "{results:?}");
    let (_, listed) = call(Method::GET, format!("{base}/v1/sessions"), &token, None).await;
    let total: u64 = listed["sessions"].as_array().unwrap().iter().map(|s| s["state_bytes"].as_u64().unwrap()).sum();
    assert!(total <= 12_000_000, "{total} bytes kept: {listed}");
}

#[tokio::test]
async fn workspace_calls_keep_their_descriptors_under_a_low_open_file_limit() {
    let ApiKey { token, entry } = api_key("k", "mia", "labs", "member");
    let dir = temp_dir("fds");
    std::fs::create_dir_all(dir.join("policies")).unwrap();
    std::fs::write(dir.join("policies/all.toml"), EVERYONE).unwrap();
    let path = dir.join("sandgate.toml");
    std::fs::write(&path, format!("policies = \"policies\"\n[ledger]\npath = \"ledger.db\"\n{entry}")).unwrap();
    // The binary under `ulimit -n 256`, with hard limit 256 too.
    let mut command = std::process::Command::new("prlimit");
    command
        .arg("--nofile=256:256")
        .arg(env!("CARGO_BIN_EXE_sandgate"))
        .env("SANDGATE_CACHE_DIR", crate::harness::cache_dir())
        .env("SANDGATE_LEDGER", dir.join("ledger.db"))
        .args(["serve", "--listen", "127.0.0.1:0", "--config"])
        .arg(&path);
    let (child, base) = start(command);
    let _server = Running { child, base: base.clone() };
    // Far more idle connections than the limit allows.
    let mut idle = Vec::new();
    for _ in 0..400 {
        if let Ok(stream) = tokio::net::TcpStream::connect(base.trim_start_matches("http://")).await {
            idle.push(stream);
        }
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut sessions = Vec::new();
    for _ in 0..4 {
        sessions.push(open_session(&base, &token).await);
    }
    let code = "await fs.writeFile('a.txt', 'x'); await fs.mkdir('d'); return (await fs.readdir('.')).length";
    let runs = sessions.iter().map(|id| execute(&base, &token, json!({ "code": code, "session_id": id })));
    for (status, body) in futures::future::join_all(runs).await {
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(body["result"], 2, "{body}");
    }
    drop(idle);
}

#[tokio::test]
async fn mount_writes_are_capped_per_principal_per_day() {
    let ApiKey { token, entry } = api_key("k", "mia", "labs", "member");
    let out = temp_dir("mount-quota");
    let policy = format!(
        "{EVERYONE}[policy.files]\nmounts = [{{ path = \"{}\", as = \"out\", mode = \"rw\", max_bytes_per_day = 3000000 }}]\n",
        out.display()
    );
    let served = serve("mount-quota", &entry, &policy);
    let write = |name: &str| {
        let code = format!("await fs.writeFile('out/{name}', 'x'.repeat(1_000_000)); return 1");
        execute(&served.base, &token, json!({ "code": code }))
    };
    let results = futures::future::join_all(["a", "b", "c", "d", "e"].map(write)).await;
    let written = results.iter().filter(|(_, body)| body["ok"] == true).count();
    assert_eq!(written, 3, "{results:?}");
    let refused = results.iter().find(|(_, body)| body["ok"] == false).unwrap();
    assert!(refused.1["error"]["message"].as_str().unwrap().starts_with("EDQUOT"), "{refused:?}");
    let on_disk: u64 = std::fs::read_dir(&out).unwrap().flatten().map(|e| e.metadata().unwrap().len()).sum();
    assert!(on_disk <= 3_000_000, "{on_disk} bytes on the host");
}

#[tokio::test]
async fn a_body_that_does_not_arrive_in_time_is_408_on_mcp_and_the_console() {
    let ApiKey { token, entry } = api_key("k", "mia", "labs", "member");
    let served = serve("slow-bodies", &format!("{entry}\n[http]\nbody_timeout_ms = 500\n"), EVERYONE);
    for (path, auth) in [("/mcp", true), ("/ui/login", false)] {
        let mut request = client()
            .post(format!("{}{path}", served.base))
            .header("content-type", "application/json")
            .header("accept", "application/json, text/event-stream")
            .header("content-length", "100")
            .body(slow_body(100, Duration::from_secs(2), Arc::new(AtomicU64::new(0))));
        if auth {
            request = request.bearer_auth(&token);
        }
        let response = request.send().await.unwrap();
        assert_eq!(response.status(), StatusCode::REQUEST_TIMEOUT, "{path}");
    }
}

#[tokio::test]
async fn logs_carry_no_colour_codes_off_a_terminal() {
    let dir = temp_dir("colours");
    let mut command = sandgate();
    command
        .env("SANDGATE_LEDGER", dir.join("ledger.db"))
        .env_remove("NO_COLOR")
        .args(["serve", "--listen", "127.0.0.1:0"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let mut child = command.spawn().unwrap();
    let mut stdout = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    std::io::BufRead::read_line(&mut stdout, &mut line).unwrap();
    crate::binary::terminate(&child);
    let output = child.wait_with_output().unwrap();
    let logs = String::from_utf8_lossy(&output.stderr);
    assert!(logs.contains("INFO"), "{logs}");
    assert!(!logs.contains('\u{1b}'), "ANSI codes in logs written to a pipe: {logs}");
}

// 9. Contract --------------------------------------------------------------------------------

#[tokio::test]
async fn one_principal_takes_at_most_half_the_server_by_default() {
    let ApiKey { token: greedy, entry: a } = api_key("greedy", "greedy", "labs", "member");
    let ApiKey { token: other, entry: b } = api_key("other", "other", "labs", "member");
    let served = serve_in(temp_dir("share"), "max_concurrent = 4", &format!("{a}{b}"), EVERYONE);
    let base = served.base.clone();
    let sleep = json!({ "code": "await tools.test.sleep({ ms: 1500 }); return 1" });
    let hogs = (0..4).map(|_| execute(&base, &greedy, sleep.clone()));
    let fair = async {
        tokio::time::sleep(Duration::from_millis(400)).await;
        execute(&base, &other, json!({ "code": "return 2" })).await
    };
    let (hogs, (status, body)) = tokio::join!(futures::future::join_all(hogs), fair);
    let served_hogs = hogs.iter().filter(|(status, _)| *status == StatusCode::OK).count();
    let refused = hogs.iter().filter(|(status, _)| *status == StatusCode::TOO_MANY_REQUESTS).count();
    assert_eq!((served_hogs, refused), (2, 2), "half of 4 for one principal: {hogs:?}");
    assert_eq!((status, &body["result"]), (StatusCode::OK, &json!(2)), "the rest stays for others: {body}");
}
