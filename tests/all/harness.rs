//! Starts servers for the tests and states requests in one line each.

use std::net::SocketAddr;
use std::sync::OnceLock;

use reqwest::StatusCode;
use serde_json::{json, Value};

/// The configuration every shared test server uses: the test capability on, and a
/// fuel ceiling high enough that wall-clock tests can run into the wall clock first.
pub const TEST_CONFIG: &str = r#"
[limits]
fuel = 400_000_000_000
wall_ms = 10_000
[sandbox]
test_capability = true
max_concurrent = 512
"#;

pub fn cache_dir() -> String {
    format!("{}/compile-cache", env!("CARGO_TARGET_TMPDIR"))
}

/// Starts a server with `config` on its own runtime thread; returns its address.
pub fn start_server(config: &str) -> SocketAddr {
    let text = format!("{config}\n");
    let mut config = sandgate::config::Config::parse(&text, std::path::Path::new("test.toml"))
        .expect("test config");
    config.sandbox.cache_dir = Some(cache_dir().into());
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async move {
            let server = sandgate::Server::new(config).expect("server builds");
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            tx.send(listener.local_addr().unwrap()).unwrap();
            server
                .serve(listener, std::future::pending())
                .await
                .unwrap();
        });
    });
    rx.recv().expect("server started")
}

/// The shared server most tests use.
pub fn base() -> &'static str {
    static BASE: OnceLock<String> = OnceLock::new();
    BASE.get_or_init(|| format!("http://{}", start_server(TEST_CONFIG)))
}

pub fn client() -> reqwest::Client {
    reqwest::Client::new()
}

/// POSTs `body` to `/v1/execute` on `base`; returns status and JSON body.
pub async fn post_to(base: &str, body: Value) -> (StatusCode, Value) {
    let response = client()
        .post(format!("{base}/v1/execute"))
        .json(&body)
        .send()
        .await
        .expect("request");
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
    let health = client()
        .get(format!("{}/healthz", base()))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status(), StatusCode::OK);
    assert_eq!(result_of("return 40 + 2").await, json!(42));
}
