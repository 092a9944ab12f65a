//! Identity from a real identity provider: npm `oidc-provider` (OpenID Certified),
//! run from `tests/idp` (installed by `tests/run`), in front of the real `sandgate`
//! binary configured with nothing but that issuer. A person signs in to the console
//! in headless Chromium through the provider's own login page; the official MCP
//! Python SDK does the whole authorization flow and calls `execute`; the official
//! OpenAI and Anthropic SDKs call the proxy with an access token; `sandgate login`
//! signs a person in on the command line (device grant and loopback), `sandgate
//! token` feeds Claude Code's `apiKeyHelper`, and personal keys are issued on the
//! command line and in the console. Every record names the person and the team from
//! the provider's claims.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use serde_json::{json, Value};

use crate::binary::{sandgate, start, Running};
use crate::harness::*;
use crate::stub::Stub;

/// The identity provider, killed when dropped.
struct Idp {
    child: Child,
    issuer: String,
}

impl Drop for Idp {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_idp(port: u16, groups: &Path, access_ttl_s: u32) -> Idp {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/idp");
    assert!(dir.join("node_modules/oidc-provider").exists(), "run tests/run: it installs tests/idp with npm ci");
    let sandgate = format!("http://127.0.0.1:{port}");
    let mut child = Command::new(crate::agents::node_dir().join("node"))
        .arg(dir.join("server.mjs"))
        .env("IDP_PORT", "0")
        .env("IDP_RESOURCE", format!("{sandgate}/mcp"))
        .env("IDP_EXTRA_RESOURCES", &sandgate)
        .env("IDP_CONSOLE_REDIRECTS", format!("{sandgate}/ui/login/callback"))
        .env("IDP_GROUPS_FILE", groups)
        .env("IDP_ACCESS_TTL", access_ttl_s.to_string())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("node starts the identity provider");
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
    let issuer = line.trim().strip_prefix("IDP_READY ").unwrap_or_else(|| panic!("ready line: {line:?}")).to_string();
    Idp { child, issuer }
}

const POLICY: &str = r#"
[[policy]]
name = "everyone"
principals = ["*"]
[policy.limits]
wall_ms = 10_000
[policy.models]
tiers = ["standard"]
[policy.keys]
max = 3
max_lifetime_days = 7
"#;

/// sandgate on `port` with only the issuer configured (no keys), a model on the stub.
struct Served {
    idp: Idp,
    stub: Stub,
    server: Running,
    ledger: PathBuf,
    dir: PathBuf,
}

fn serve(label: &str) -> Served {
    serve_with(label, 300)
}

/// [`serve`], the provider's access tokens living `access_ttl_s`.
fn serve_with(label: &str, access_ttl_s: u32) -> Served {
    let dir = temp_dir(label);
    let groups = dir.join("groups.json");
    std::fs::write(&groups, json!({"ada": ["eng-platform", "sandgate-admins"], "bo": ["eng-payments"]}).to_string())
        .unwrap();
    let port = free_port();
    let idp = start_idp(port, &groups, access_ttl_s);
    let stub = Stub::start();
    std::fs::create_dir_all(dir.join("policies")).unwrap();
    std::fs::write(dir.join("policies/sso.toml"), POLICY).unwrap();
    let config = format!(
        r#"policies = "policies"
[ledger]
path = "ledger.db"

[auth]
public_url = "http://127.0.0.1:{port}"

[[auth.oidc]]
issuer = "{issuer}"
admin_groups = ["sandgate-admins"]
client_id = "sandgate-console"
client_secret_env = "SSO_CONSOLE_SECRET"
cli_client_id = "sandgate-cli"
scopes = ["openid", "email", "profile", "groups"]

[providers.chat]
kind = "openai"
base_url = "{stub}/v1"
api_key_env = "SSO_PROVIDER_KEY"

[providers.messages]
kind = "anthropic"
base_url = "{stub}"
api_key_env = "SSO_PROVIDER_KEY"

[models.sso-model]
provider = "chat"
upstream = "gpt-ok"
tier = "standard"
input_per_mtok = 1.0
output_per_mtok = 2.0

[models.sso-claude]
provider = "messages"
upstream = "claude-ok+agent"
tier = "standard"
input_per_mtok = 1.0
output_per_mtok = 2.0
"#,
        issuer = idp.issuer,
        stub = stub.base,
    );
    std::fs::write(dir.join("sandgate.toml"), config).unwrap();
    let mut command = sandgate();
    command
        .current_dir(&dir)
        .env("SSO_CONSOLE_SECRET", "console-secret")
        .env("SSO_PROVIDER_KEY", "sk-stub-sso")
        .env("SANDGATE_LEDGER", dir.join("ledger.db"))
        .args(["serve", "--listen", &format!("127.0.0.1:{port}"), "--config"])
        .arg(dir.join("sandgate.toml"));
    let (child, base) = start(command);
    Served { idp, stub, server: Running { child, base }, ledger: dir.join("ledger.db"), dir }
}

fn python(script: &str, args: &[&str]) -> Value {
    python_with(script, args, &[])
}

fn python_with(script: &str, args: &[&str], env: &[(&str, &Path)]) -> Value {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python").join(script);
    let mut command = Command::new("python3");
    command.arg(path).args(args);
    for (name, value) in env {
        command.env(name, value);
    }
    let output = command.output().expect("python3 runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{script} failed: {stdout}\n{}",
        String::from_utf8_lossy(&output.stderr).chars().take(4000).collect::<String>()
    );
    serde_json::from_str(stdout.lines().last().unwrap_or_default()).unwrap_or_else(|e| panic!("{e}: {stdout}"))
}

#[test]
fn the_official_sdks_call_the_proxy_with_a_token_from_the_provider() {
    let served = serve("sso-sdk");
    let out = python(
        "sso_clients.py",
        &["sdk", "--issuer", &served.idp.issuer, "--sandgate", &served.server.base, "--user", "ada"],
    );
    assert!(!out["openai"].as_str().unwrap_or_default().is_empty(), "{out}");
    assert!(!out["anthropic"].as_str().unwrap_or_default().is_empty(), "{out}");
    assert_eq!(out["claims"]["aud"], served.server.base.as_str(), "a token for sandgate itself: {out}");
    let rows = ledger_rows_within(&served.ledger, "SELECT user, team, key FROM model_calls", 2);
    for row in &rows {
        assert_eq!(row, &vec![json!("ada@example.com"), json!("eng-platform"), json!("sso")], "{rows:?}");
    }
    // The person's token is sandgate's alone: the provider gets sandgate's own key.
    let sent = served.stub.requests();
    assert_eq!(sent.len(), 2, "{sent:?}");
    assert!(sent.iter().all(|r| r.authorization.as_deref() == Some("Bearer sk-stub-sso")), "{sent:?}");
}

#[test]
fn an_mcp_client_signs_in_through_the_oauth_flow_and_calls_execute() {
    let served = serve("sso-mcp");
    let out = python("sso_clients.py", &["mcp", "--sandgate", &served.server.base, "--user", "bo"]);
    assert_eq!(out["is_error"], false, "{out}");
    assert_eq!(out["result"]["result"], 42, "{out}");
    assert_eq!(out["token_claims"]["aud"], format!("{}/mcp", served.server.base), "{out}");
    let rows = ledger_rows_within(&served.ledger, "SELECT user, team, key FROM executions", 1);
    assert_eq!(rows, vec![vec![json!("bo@example.com"), json!("eng-payments"), json!("sso")]]);
}

#[test]
fn a_person_signs_in_to_the_console_with_sso_in_a_real_browser() {
    let served = serve("sso-console");
    let out = python("sso_browser.py", &[&served.server.base, "ada"]);
    let viewer = out["viewer"].as_str().unwrap_or_default();
    assert!(viewer.contains("ada@example.com (team eng-platform, admin)"), "{out}");
    // The key made on the keys page calls the API as the person, then is revoked there.
    assert_eq!(out["key_me"]["user"], "ada@example.com", "{out}");
    assert_eq!(out["key_me"]["key"], "console-made", "{out}");
    assert_eq!(out["key_me"]["teams"], json!(["eng-platform", "sandgate-admins"]), "{out}");
    assert_eq!(out["revoked_status"], 401, "{out}");
}

/// `sandgate` run as a person on their machine: their credentials file, nothing else.
fn person(credentials: &Path, args: &[&str]) -> std::process::Output {
    sandgate().env("SANDGATE_CREDENTIALS", credentials).env_remove("SANDGATE_URL").args(args).output().unwrap()
}

fn stdout_of(output: &std::process::Output) -> String {
    assert!(
        output.status.success(),
        "sandgate failed: {}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout.clone()).unwrap().trim().to_string()
}

fn claims(token: &str) -> Value {
    use base64::Engine;
    let payload = token.split('.').nth(1).expect("a JWT");
    serde_json::from_slice(&base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(payload).unwrap()).unwrap()
}

fn block_on<T>(future: impl std::future::Future<Output = T>) -> T {
    tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(future)
}

fn binary_path() -> String {
    sandgate().get_program().to_string_lossy().into_owned()
}

#[test]
fn a_person_signs_in_on_the_command_line_and_gets_fresh_tokens_and_personal_keys() {
    use std::os::unix::fs::PermissionsExt;
    // Access tokens live 30 s, less than the minute `sandgate token` wants left: every
    // `sandgate token` refreshes.
    let served = serve_with("sso-cli", 30);
    let base = served.server.base.as_str();
    let credentials = served.dir.join("home/credentials.json");
    let env = [("SANDGATE_CREDENTIALS", credentials.as_path())];

    // The device grant, approved on the provider's own pages.
    let out = python_with("sso_cli.py", &[&binary_path(), base, "ada"], &env);
    assert_eq!(out["status"], 0, "{out}");
    let said = out["stderr"].as_str().unwrap();
    assert!(said.contains(&format!("Signed in to {base} as ada@example.com (teams eng-platform")), "{said}");
    assert!(out["url"].as_str().unwrap().starts_with(&served.idp.issuer), "{out}");
    let mode = std::fs::metadata(&credentials).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "the credentials file is the person's alone");

    // Fresh tokens for sandgate itself, refreshed with the refresh token.
    let first = stdout_of(&person(&credentials, &["token"]));
    let second = stdout_of(&person(&credentials, &["token", "--server", base]));
    assert_ne!(first, second, "a token with under a minute left is refreshed");
    for token in [&first, &second] {
        let claims = claims(token);
        assert_eq!((claims["aud"].as_str(), claims["email"].as_str()), (Some(base), Some("ada@example.com")));
    }
    let me = get_json(&format!("{base}/v1/me"), &second);
    assert_eq!((me["user"].as_str(), me["via"].as_str()), (Some("ada@example.com"), Some("sso")), "{me}");

    // A personal key from the command line, attributed to the person.
    let key = stdout_of(&person(&credentials, &["personal-key", "create", "--name", "ada-cli", "--expires-in", "2h"]));
    assert!(key.starts_with("sg_"), "{key}");
    let listed = stdout_of(&person(&credentials, &["personal-key", "list"]));
    assert!(listed.contains("ada-cli") && listed.contains("ada@example.com"), "{listed}");
    let all = stdout_of(&person(&credentials, &["personal-key", "list", "--all"]));
    assert!(all.contains(&format!("{}#ada", served.idp.issuer)), "an admin sees each key's owner: {all}");
    let too_long = person(&credentials, &["personal-key", "create", "--expires-in", "30d"]);
    assert_eq!(too_long.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&too_long.stderr).contains("keys.max_lifetime_days"), "{too_long:?}");
    let answer = block_on(async {
        client()
            .post(format!("{base}/v1/chat/completions"))
            .bearer_auth(&key)
            .json(&json!({"model": "sso-model", "messages": [{"role": "user", "content": "hi"}]}))
            .send()
            .await
            .unwrap()
    });
    assert_eq!(answer.status(), 200);
    let rows = ledger_rows_within(&served.ledger, "SELECT user, team, key FROM model_calls", 1);
    assert_eq!(rows, vec![vec![json!("ada@example.com"), json!("eng-platform"), json!("ada-cli")]]);
    stdout_of(&person(&credentials, &["personal-key", "revoke", "ada-cli"]));
    assert_eq!(get_text(&format!("{base}/v1/me"), &key).0, 401, "a revoked key is refused at once");

    // Signing out forgets the sign-in; the token command then says what to do.
    stdout_of(&person(&credentials, &["logout", "--server", base]));
    let after = person(&credentials, &["token", "--server", base]);
    assert_eq!(after.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&after.stderr).contains("sandgate login"), "{after:?}");

    // The loopback flow: the browser comes back to the command's own listener.
    let out = python_with("sso_cli.py", &[&binary_path(), base, "bo", "--browser"], &env);
    assert_eq!(out["status"], 0, "{out}");
    assert!(out["url"].as_str().unwrap().contains("redirect_uri=http%3A%2F%2F127.0.0.1%3A"), "{out}");
    let token = stdout_of(&person(&credentials, &["token"]));
    assert_eq!(claims(&token)["email"], "bo@example.com");
}

/// Claude Code with `apiKeyHelper` set to `sandgate token`: no key in its settings,
/// every model call and its `execute` attributed to the person signed in.
#[test]
fn claude_code_takes_its_key_from_sandgate_token() {
    use crate::agents::{agent_bin, assert_done, Agent};
    let served = serve("sso-claude");
    let base = served.server.base.as_str();
    let credentials = served.dir.join("home/credentials.json");
    let out = python_with("sso_cli.py", &[&binary_path(), base, "bo"], &[("SANDGATE_CREDENTIALS", &credentials)]);
    assert_eq!(out["status"], 0, "{out}");
    let mcp_token = stdout_of(&person(&credentials, &["token"]));

    let mut agent = Agent::new("sso-claude-home", &agent_bin("claude"));
    let config_dir = agent.home.join(".claude");
    std::fs::create_dir_all(&config_dir).unwrap();
    let helper = format!("{} token --server {base}", binary_path());
    std::fs::write(config_dir.join("settings.json"), json!({"apiKeyHelper": helper}).to_string()).unwrap();
    let mcp = json!({"mcpServers": {"sandgate": {
        "type": "http", "url": format!("{base}/mcp"),
        "headers": {"Authorization": format!("Bearer {mcp_token}")},
    }}});
    let mcp_file = agent.home.join("mcp.json");
    std::fs::write(&mcp_file, mcp.to_string()).unwrap();
    agent
        .args(["-p", "Compute 6 * 7 with the execute tool.", "--output-format", "json", "--mcp-config"])
        .args([&mcp_file])
        .args(["--strict-mcp-config", "--allowedTools", "mcp__sandgate__execute", "--model", "sso-claude"])
        .env("CLAUDE_CONFIG_DIR", &config_dir)
        .env("SANDGATE_CREDENTIALS", &credentials)
        .env("ANTHROPIC_BASE_URL", base)
        .env("ANTHROPIC_DEFAULT_HAIKU_MODEL", "sso-claude")
        .env("ANTHROPIC_SMALL_FAST_MODEL", "sso-claude")
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
    let rows = ledger_rows_within(&served.ledger, "SELECT DISTINCT user, team, key FROM model_calls", 1);
    assert_eq!(rows, vec![vec![json!("bo@example.com"), json!("eng-payments"), json!("sso")]], "{rows:?}");
    let rows = ledger_rows_within(&served.ledger, "SELECT user, team FROM executions", 1);
    assert_eq!(rows, vec![vec![json!("bo@example.com"), json!("eng-payments")]]);
    // The provider gets sandgate's own key, never the person's token.
    let sent: Vec<_> = served.stub.requests().into_iter().filter(|r| r.path == "/v1/messages").collect();
    assert!(!sent.is_empty());
    assert!(sent.iter().all(|r| r.x_api_key.as_deref() == Some("sk-stub-sso")), "{sent:?}");
}
