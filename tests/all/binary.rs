//! The real `sandgate` executable: `serve` and `exec`.

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, Command, Stdio};

use serde_json::{json, Value};

use crate::harness::{cache_dir, client};

fn sandgate() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_sandgate"));
    command
        .env("SANDGATE_CACHE_DIR", cache_dir())
        .env_remove("SANDGATE_CONFIG");
    command
}

/// Starts `sandgate serve` on an ephemeral loopback port; returns it and its base URL.
fn serve(extra: &[&str]) -> (Child, String) {
    let mut child = sandgate()
        .args(["serve", "--listen", "127.0.0.1:0"])
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("sandgate starts");
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let base = line
        .trim()
        .strip_prefix("sandgate listening on ")
        .expect("ready line")
        .to_string();
    (child, base)
}

fn terminate(child: &Child) {
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

#[tokio::test]
async fn serve_runs_code_and_shuts_down_gracefully() {
    let (mut child, base) = serve(&[]);
    let health = client()
        .get(format!("{base}/healthz"))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status(), 200);

    // An execution still running when SIGTERM arrives finishes and is answered.
    let slow = client()
        .post(format!("{base}/v1/execute"))
        .json(&json!({"code": "const end = Date.now() + 700; while (Date.now() < end) {} return 'finished'"}))
        .send();
    let signal = async {
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
        terminate(&child);
    };
    let (response, ()) = tokio::join!(slow, signal);
    let body: Value = response.unwrap().json().await.unwrap();
    assert_eq!(body["result"], "finished", "{body}");
    let status = child.wait().unwrap();
    assert!(status.success(), "{status}");
}

#[tokio::test]
async fn serve_refuses_a_public_address_without_keys() {
    let output = sandgate()
        .args(["serve", "--listen", "0.0.0.0:0"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("loopback"));
}

#[tokio::test]
async fn serve_rejects_a_bad_config_file_with_its_name_and_line() {
    let path = format!("{}/bad-config.toml", env!("CARGO_TARGET_TMPDIR"));
    std::fs::write(&path, "[limits]\nfuel = 1\nwal_ms = 5\n").unwrap();
    let output = sandgate()
        .args(["serve", "--config", &path])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("bad-config.toml")
            && stderr.contains("wal_ms")
            && stderr.contains("line 3"),
        "{stderr}"
    );
}

fn exec(code: &str, args: &[&str]) -> (Option<i32>, Value) {
    let mut child = sandgate()
        .args(["exec", "-"])
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(code.as_bytes())
        .unwrap();
    let output = child.wait_with_output().unwrap();
    let body = serde_json::from_slice(&output.stdout).unwrap_or(Value::Null);
    (output.status.code(), body)
}

#[test]
fn exec_prints_the_same_outcome_as_http() {
    let (code, body) = exec(
        "console.log('hi'); return input.x * 6",
        &["--input", "{\"x\": 7}"],
    );
    assert_eq!(code, Some(0), "{body}");
    assert_eq!(body["result"], 42);
    assert_eq!(body["logs"], json!([{"level": "log", "message": "hi"}]));

    let (code, body) = exec("while (true) {}", &["--limits", "{\"fuel\": 1000000}"]);
    assert_eq!(code, Some(1));
    assert_eq!(body["error"]["kind"], "out_of_fuel");

    let (code, _) = exec("return 1", &["--limits", "{\"fuel\": \"lots\"}"]);
    assert_eq!(code, Some(2));
}
