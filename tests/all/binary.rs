//! The real `sandgate` executable: `serve` and `exec` (`mcp` is in `mcp.rs`).

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, Command, Stdio};

use serde_json::{json, Value};

use crate::harness::{cache_dir, client, temp_dir};

pub(crate) fn sandgate() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_sandgate"));
    command
        .env("SANDGATE_CACHE_DIR", cache_dir())
        .env("SANDGATE_LEDGER", temp_dir("binary-ledger").join("ledger.db"))
        .env_remove("SANDGATE_CONFIG");
    command
}

/// Starts `sandgate serve` on an ephemeral loopback port; returns it and its base URL.
pub(crate) fn serve(extra: &[&str]) -> (Child, String) {
    let mut command = sandgate();
    command.args(["serve", "--listen", "127.0.0.1:0"]).args(extra);
    start(command)
}

/// Starts `command` (a `sandgate serve`, perhaps wrapped) and waits for its ready line;
/// returns the process and its base URL.
pub(crate) fn start(mut command: Command) -> (Child, String) {
    let mut child = command.stdout(Stdio::piped()).stderr(Stdio::null()).spawn().expect("sandgate starts");
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
    let base = line.trim().strip_prefix("sandgate listening on ").expect("ready line").to_string();
    (child, base)
}

/// A served binary, killed when dropped (a failing test leaves no server behind).
pub(crate) struct Running {
    pub child: Child,
    pub base: String,
}

impl Running {
    pub(crate) fn serve(extra: &[&str]) -> Self {
        let (child, base) = serve(extra);
        Self { child, base }
    }

    /// SIGTERM, then waits for the exit.
    pub(crate) fn stop(&mut self) {
        terminate(&self.child);
        self.child.wait().unwrap();
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub(crate) fn terminate(child: &Child) {
    let status = Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap();
    assert!(status.success());
}

#[tokio::test]
async fn serve_runs_code_and_shuts_down_gracefully() {
    let (mut child, base) = serve(&[]);
    let health = client().get(format!("{base}/healthz")).send().await.unwrap();
    assert_eq!(health.status(), 200);

    // An execution still running when SIGTERM arrives finishes and is answered.
    let slow = client()
        .post(format!("{base}/v1/execute"))
        .json(&json!({"code": "const end = Date.now() + 400; while (Date.now() < end) {} return 'finished'"}))
        .send();
    let signal = async {
        tokio::time::sleep(std::time::Duration::from_millis(150)).await;
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
    let output = sandgate().args(["serve", "--listen", "0.0.0.0:0"]).output().unwrap();
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("loopback"));
}

#[tokio::test]
async fn serve_rejects_a_bad_config_file_with_its_name_and_line() {
    let path = format!("{}/bad-config.toml", env!("CARGO_TARGET_TMPDIR"));
    std::fs::write(&path, "[sandbox]\nmax_concurrent = 4\nmax_concurent = 5\n").unwrap();
    let output = sandgate().args(["serve", "--config", &path]).output().unwrap();
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("bad-config.toml:3:1:") && stderr.contains("max_concurent"), "{stderr}");
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
    child.stdin.take().unwrap().write_all(code.as_bytes()).unwrap();
    let output = child.wait_with_output().unwrap();
    let body = serde_json::from_slice(&output.stdout).unwrap_or(Value::Null);
    (output.status.code(), body)
}

#[test]
fn exec_prints_the_same_outcome_as_http() {
    let (code, body) = exec("console.log('hi'); return input.x * 6", &["--input", "{\"x\": 7}"]);
    assert_eq!(code, Some(0), "{body}");
    assert_eq!(body["result"], 42);
    assert_eq!(body["logs"], json!([{"level": "log", "message": "hi"}]));

    let (code, body) = exec("while (true) {}", &["--limits", "{\"fuel\": 1000000}"]);
    assert_eq!(code, Some(1));
    assert_eq!(body["error"]["kind"], "out_of_fuel");

    let (code, _) = exec("return 1", &["--limits", "{\"fuel\": \"lots\"}"]);
    assert_eq!(code, Some(2));

    // TypeScript: by flag, or by a `.ts` file name.
    let (code, body) = exec("const n: number = 6;\nreturn n * 7 as number", &["--language", "typescript"]);
    assert_eq!((code, &body["result"]), (Some(0), &json!(42)), "{body}");
    let file = temp_dir("exec-ts").join("answer.ts");
    std::fs::write(&file, "interface A { n: number }\nconst a: A = { n: 42 };\nreturn a.n").unwrap();
    let output = sandgate().arg("exec").arg(&file).stderr(Stdio::null()).output().unwrap();
    let body: Value = serde_json::from_slice(&output.stdout).unwrap_or(Value::Null);
    assert_eq!(body["result"], 42, "{body}");
}

/// A config directory with a permissive policy and its own ledger.
/// [`served_dir`] whose policy also grants sessions to everyone.
pub(crate) fn sessions_dir(label: &str) -> std::path::PathBuf {
    let dir = served_dir(label);
    std::fs::write(
        dir.join("policies/all.toml"),
        "[[policy]]\nname = \"all\"\nprincipals = [\"*\"]\n[policy.limits]\n[policy.sessions]\n",
    )
    .unwrap();
    dir
}

pub(crate) fn served_dir(label: &str) -> std::path::PathBuf {
    let dir = temp_dir(label);
    std::fs::create_dir_all(dir.join("policies")).unwrap();
    std::fs::write(
        dir.join("policies/all.toml"),
        "[[policy]]\nname = \"all\"\nprincipals = [\"*\"]\n[policy.limits]\nfuel = 10_000_000_000\n",
    )
    .unwrap();
    std::fs::write(dir.join("sandgate.toml"), "policies = \"policies\"\n[ledger]\npath = \"ledger.db\"\n").unwrap();
    dir
}

#[tokio::test]
async fn acknowledged_executions_survive_kill_9() {
    use futures::StreamExt;
    let dir = served_dir("durability");
    let config = dir.join("sandgate.toml");
    let (mut child, base) = serve(&["--config", config.to_str().unwrap()]);
    let acknowledged = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let pid = child.id();
    let results = futures::stream::iter(0..200)
        .map(|i| {
            let (base, acknowledged) = (base.clone(), acknowledged.clone());
            async move {
                let response = client()
                    .post(format!("{base}/v1/execute"))
                    .json(&json!({"code": "return input", "input": i}))
                    .send()
                    .await;
                if let Ok(response) = response {
                    if response.status() == 200 {
                        if let Ok(body) = response.json::<Value>().await {
                            let mut acked = acknowledged.lock().unwrap();
                            acked.push(body["execution_id"].as_str().unwrap().to_string());
                            if acked.len() == 60 {
                                Command::new("kill").args(["-KILL", &pid.to_string()]).status().unwrap();
                            }
                        }
                    }
                }
            }
        })
        .buffer_unordered(16)
        .collect::<Vec<()>>();
    results.await;
    child.wait().unwrap();
    let acknowledged = acknowledged.lock().unwrap().clone();
    assert!(acknowledged.len() >= 60 && acknowledged.len() < 200, "{} acknowledged", acknowledged.len());

    // Restart on the same ledger, then look every acknowledged execution up.
    let (mut child, base) = serve(&["--config", config.to_str().unwrap()]);
    let report: Value = client().get(format!("{base}/v1/usage")).send().await.unwrap().json().await.unwrap();
    assert!(report["totals"]["executions"].as_u64().unwrap() >= acknowledged.len() as u64, "{report}");
    let ledger = rusqlite::Connection::open(dir.join("ledger.db")).unwrap();
    for id in &acknowledged {
        let found: i64 = ledger.query_row("SELECT COUNT(*) FROM executions WHERE id = ?1", [id], |r| r.get(0)).unwrap();
        assert_eq!(found, 1, "acknowledged execution {id} is missing from the ledger");
    }
    terminate(&child);
    child.wait().unwrap();
}

fn run_cli(args: &[&str]) -> (Option<i32>, String, String) {
    let output = sandgate().args(args).output().unwrap();
    (
        output.status.code(),
        String::from_utf8_lossy(&output.stdout).into(),
        String::from_utf8_lossy(&output.stderr).into(),
    )
}

#[tokio::test]
async fn key_create_records_only_a_hash_and_the_key_works() {
    let dir = served_dir("keys");
    let config = dir.join("sandgate.toml");
    let config = config.to_str().unwrap();
    let (code, stdout, stderr) =
        run_cli(&["key", "create", "--user", "alice", "--team", "platform", "--name", "laptop", "--config", config]);
    assert_eq!(code, Some(0), "{stderr}");
    let key = stdout.trim().to_string();
    assert!(key.starts_with("sg_"), "{stdout}");
    let text = std::fs::read_to_string(config).unwrap();
    assert!(text.contains("name = \"laptop\"") && text.contains("sha256:") && !text.contains(&key), "{text}");
    let (code, _, stderr) =
        run_cli(&["key", "create", "--user", "alice", "--team", "platform", "--name", "laptop", "--config", config]);
    assert_eq!(code, Some(2), "a duplicate name is refused: {stderr}");

    let (child, base) = serve(&["--config", config]);
    let (status, _) = crate::harness::post_as(&base, None, json!({"code": "1"})).await;
    assert_eq!(status, 401);
    let (status, body) = crate::harness::post_as(&base, Some(&key), json!({"code": "1"})).await;
    assert_eq!(status, 200, "{body}");
    terminate(&child);

    let (code, stdout, _) = run_cli(&["usage", "--config", config, "--group-by", "user"]);
    assert_eq!(code, Some(0));
    let alice = stdout.lines().find(|l| l.starts_with("alice")).unwrap_or_else(|| panic!("{stdout}"));
    assert_eq!(alice.split_whitespace().nth(1), Some("1"), "{stdout}");
}

#[test]
fn policy_check_and_explain() {
    let (code, stdout, stderr) = run_cli(&["policy", "check", "policies"]);
    assert_eq!(code, Some(0), "{stderr}");
    assert!(stdout.starts_with("ok: "), "{stdout}");

    let dir = temp_dir("broken-policies");
    std::fs::write(dir.join("bad.toml"), "[[policy]]\nname = \"x\"\nprincipals = [\"group:a\"]\n").unwrap();
    let (code, _, stderr) = run_cli(&["policy", "check", dir.to_str().unwrap()]);
    assert_eq!(code, Some(1));
    assert!(stderr.contains("bad.toml:3:"), "{stderr}");

    let explain = |extra: &[&str]| {
        let mut args = vec!["policy", "explain", "--policies", "policies", "--user", "alice", "--team", "platform"];
        args.extend_from_slice(extra);
        run_cli(&args)
    };
    let (code, stdout, _) = explain(&["--tool", "github.create_issue"]);
    assert_eq!(code, Some(0), "{stdout}");
    assert!(stdout.starts_with("allow") && stdout.contains("trusted.toml:"), "{stdout}");
    let (code, stdout, _) = explain(&["--tool", "github.delete_repo"]);
    assert_eq!(code, Some(1), "{stdout}");
    assert!(stdout.starts_with("deny") && stdout.contains("delete"), "{stdout}");
    // A rule with a condition: the call's arguments decide, and the rule is named.
    let push = ["--tool", "github.push_files", "--args"];
    let (code, stdout, _) = explain(&[&push[..], &[r#"{"branch": "main", "files": []}"#]].concat());
    assert_eq!(code, Some(1), "{stdout}");
    assert!(stdout.starts_with("deny: policies/trusted.toml:") && stdout.contains("rules[1] deny when"), "{stdout}");
    assert!(stdout.contains("through a pull request"), "{stdout}");
    let (code, stdout, _) = explain(&[&push[..], &[r#"{"branch": "dev"}"#]].concat());
    assert_eq!(code, Some(0), "{stdout}");
    assert!(stdout.contains("tools.allow \"*\""), "{stdout}");
    let (code, _, stderr) = explain(&[&push[..], &["{bad"]].concat());
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("--args is not JSON"), "{stderr}");
    let (code, stdout, _) = explain(&["--tier", "frontier"]);
    assert_eq!(code, Some(0), "{stdout}");
    let (code, stdout, _) = explain(&["--execute"]);
    assert_eq!(code, Some(0), "{stdout}");
    assert!(stdout.contains("limits:"), "{stdout}");
}
