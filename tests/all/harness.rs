//! Starts servers for the tests and states requests in one line each.

use std::net::SocketAddr;
use std::sync::OnceLock;

use reqwest::StatusCode;
use serde_json::{json, Value};

/// The configuration every shared test server uses.
pub const TEST_CONFIG: &str = r#"
[sandbox]
test_capability = true
max_concurrent = 512
"#;

/// The policy every shared test server uses: everyone may run code with a fuel
/// ceiling high enough that wall-clock tests reach the wall clock first, and may call
/// the test capability.
pub const TEST_POLICY: &str = r#"
[[policy]]
name = "tests"
principals = ["*"]
[policy.limits]
fuel = 400_000_000_000
wall_ms = 10_000
concurrent = 10_000
[policy.tools]
allow = ["test.*"]
"#;

pub fn cache_dir() -> String {
    format!("{}/compile-cache", env!("CARGO_TARGET_TMPDIR"))
}

/// A free loopback port (bound, then released for a child process to take).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A fresh directory under the test target directory.
pub fn temp_dir(label: &str) -> std::path::PathBuf {
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("{label}-{}", uuid::Uuid::now_v7()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A server started by [`start_server_with`].
pub struct TestServer {
    pub addr: SocketAddr,
    pub base: String,
    /// Holds `policies/`, `ledger.db` and `sandgate.toml`.
    pub dir: std::path::PathBuf,
}

impl TestServer {
    pub fn policy_file(&self) -> std::path::PathBuf {
        self.dir.join("policies/test.toml")
    }

    pub fn ledger(&self) -> std::path::PathBuf {
        self.dir.join("ledger.db")
    }
}

/// Starts a server with `config` (sandgate.toml text; `policies` and, unless it has a
/// `[store]`, `[ledger]` are added) and one policy file holding `policy`, on its own runtime thread.
pub fn start_server_with(config: &str, policy: &str) -> TestServer {
    start_server_at(config, policy, 0)
}

/// [`start_server_with`] on loopback port `port` (0: any free one).
pub fn start_server_at(config: &str, policy: &str, port: u16) -> TestServer {
    let dir = temp_dir("server");
    std::fs::create_dir_all(dir.join("policies")).unwrap();
    std::fs::write(dir.join("policies/test.toml"), policy).unwrap();
    // A configuration naming its own store (PostgreSQL) keeps it; others get a SQLite
    // ledger of their own.
    let ledger = if config.contains("[store]") {
        String::new()
    } else {
        format!("[ledger]\npath = \"{}\"\n", dir.join("ledger.db").display())
    };
    let text = format!("policies = \"{}\"\n{config}\n{ledger}", dir.join("policies").display());
    let path = dir.join("sandgate.toml");
    std::fs::write(&path, &text).unwrap();
    let mut config = sandgate::config::Config::load(&path).expect("test config");
    config.sandbox.cache_dir = Some(cache_dir().into());
    // Cranelift's code from the first execution on, whoever fills the shared cache:
    // where deep recursion through a built-in ends depends on the compiler
    // (`tiers.rs` tests Winch's code and the move between them).
    config.sandbox.compiler = sandgate::sandbox::Compiler::Optimizing;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        runtime.block_on(async move {
            let server = sandgate::Server::new(config).await.expect("server builds");
            let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await.unwrap();
            tx.send(listener.local_addr().unwrap()).unwrap();
            server.serve(listener, std::future::pending()).await.unwrap();
        });
    });
    let addr = rx.recv().expect("server started");
    TestServer { addr, base: format!("http://{addr}"), dir }
}

/// Starts a server with `config` and the shared test policy.
pub fn start_server(config: &str) -> SocketAddr {
    start_server_with(config, TEST_POLICY).addr
}

/// The shared server most tests use.
pub fn base() -> &'static str {
    static BASE: OnceLock<String> = OnceLock::new();
    BASE.get_or_init(|| format!("http://{}", start_server(TEST_CONFIG)))
}

pub fn client() -> reqwest::Client {
    sandgate::install_crypto_provider();
    reqwest::Client::new()
}

/// Sends `method` to `url` as `key` with the JSON `body`; returns the status and the
/// body as JSON (a body that is not JSON as a string).
pub async fn call(method: reqwest::Method, url: String, key: &str, body: Option<Value>) -> (StatusCode, Value) {
    let mut request = client().request(method, url).bearer_auth(key);
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request.send().await.expect("request");
    let status = response.status();
    let text = response.text().await.expect("a body");
    (status, serde_json::from_str(&text).unwrap_or(Value::String(text)))
}

/// POSTs `body` to `/v1/execute` on `base`; returns status and JSON body.
pub async fn post_to(base: &str, body: Value) -> (StatusCode, Value) {
    post_as(base, None, body).await
}

/// POSTs `body` to `/v1/execute` on `base` with `key` as the bearer token.
pub async fn post_as(base: &str, key: Option<&str>, body: Value) -> (StatusCode, Value) {
    let mut request = client().post(format!("{base}/v1/execute")).json(&body);
    if let Some(key) = key {
        request = request.bearer_auth(key);
    }
    let response = request.send().await.expect("request");
    let status = response.status();
    let body = response.json::<Value>().await.expect("JSON body");
    (status, body)
}

/// Runs `body` on the shared server and expects a 200.
pub async fn run(body: Value) -> Value {
    let (status, body) = post_to(base(), body).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body
}

/// Runs `code` and returns its result, failing the test if it did not succeed.
pub async fn result_of(code: &str) -> Value {
    let body = run(json!({ "code": code })).await;
    assert_eq!(body["ok"], true, "{code}: {body}");
    body["result"].clone()
}

/// Runs `code` with `limits` and returns the error object, failing if it succeeded.
pub async fn error_of(code: &str, limits: Value) -> Value {
    let body = run(json!({ "code": code, "limits": limits })).await;
    assert_eq!(body["ok"], false, "{code}: expected an error, got {body}");
    assert!(body["result"].is_null(), "{body}");
    body["error"].clone()
}

/// The shared server still answers and still runs code.
pub async fn assert_healthy() {
    let health = client().get(format!("{}/healthz", base())).send().await.unwrap();
    assert_eq!(health.status(), StatusCode::OK);
    assert_eq!(result_of("return 40 + 2").await, json!(42));
}

/// GETs `url` with `key` as the bearer token from synchronous code; returns the JSON.
pub fn get_json(url: &str, key: &str) -> Value {
    let (_, body) = get_text(url, key);
    serde_json::from_str(&body).unwrap_or_else(|e| panic!("{url}: {e}: {body}"))
}

/// GETs `url` with `key` as the bearer token from synchronous code; returns the status
/// and body.
pub fn get_text(url: &str, key: &str) -> (StatusCode, String) {
    let (url, key) = (url.to_string(), key.to_string());
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        runtime.block_on(async {
            let response = client().get(url).bearer_auth(key).send().await.unwrap();
            (response.status(), response.text().await.unwrap())
        })
    })
    .join()
    .unwrap()
}

/// A new API key and its `[[keys]]` entry for sandgate.toml.
pub struct ApiKey {
    pub token: String,
    pub entry: String,
}

pub fn api_key(name: &str, user: &str, team: &str, role: &str) -> ApiKey {
    let token = sandgate::auth::generate_key();
    let entry = format!(
        "[[keys]]\nname = \"{name}\"\nuser = \"{user}\"\nteam = \"{team}\"\nrole = \"{role}\"\nhash = \"{}\"\n",
        sandgate::auth::hash_key(&token)
    );
    ApiKey { token, entry }
}

/// The rows `sql` returns from the ledger at `path`, each column as JSON.
pub fn ledger_rows_at(path: &std::path::Path, sql: &str) -> Vec<Vec<Value>> {
    let ledger = rusqlite::Connection::open(path).unwrap();
    let mut statement = ledger.prepare(sql).unwrap();
    let columns = statement.column_count();
    statement
        .query_map([], |row| {
            Ok((0..columns)
                .map(|i| match row.get_ref(i).unwrap() {
                    rusqlite::types::ValueRef::Integer(n) => json!(n),
                    rusqlite::types::ValueRef::Real(x) => json!(x),
                    rusqlite::types::ValueRef::Text(t) => json!(String::from_utf8_lossy(t)),
                    _ => Value::Null,
                })
                .collect())
        })
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap()
}

/// Records are committed just after their answer is sent: the rows `sql` returns from
/// the ledger at `path` once there are at least `at_least` of them (waiting at most
/// 10 s; then whatever there is).
pub fn ledger_rows_within(path: &std::path::Path, sql: &str, at_least: usize) -> Vec<Vec<Value>> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let rows = ledger_rows_at(path, sql);
        if rows.len() >= at_least || std::time::Instant::now() > deadline {
            return rows;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}
