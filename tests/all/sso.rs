//! Identity from a real identity provider: npm `oidc-provider` (OpenID Certified),
//! run from `tests/idp` (installed by `tests/run`), in front of the real `sandgate`
//! binary configured with nothing but that issuer. A person signs in to the console
//! in headless Chromium through the provider's own login page; the official MCP
//! Python SDK does the whole authorization flow and calls `execute`; the official
//! OpenAI and Anthropic SDKs call the proxy with an access token. Every record names
//! the person and the team from the provider's claims.

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

fn start_idp(port: u16, groups: &Path) -> Idp {
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
"#;

/// sandgate on `port` with only the issuer configured (no keys), a model on the stub.
struct Served {
    idp: Idp,
    stub: Stub,
    server: Running,
    ledger: PathBuf,
}

fn serve(label: &str) -> Served {
    let dir = temp_dir(label);
    let groups = dir.join("groups.json");
    std::fs::write(&groups, json!({"ada": ["eng-platform", "sandgate-admins"], "bo": ["eng-payments"]}).to_string())
        .unwrap();
    let port = free_port();
    let idp = start_idp(port, &groups);
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
scopes = ["openid", "email", "profile", "groups"]

[providers.chat]
kind = "openai"
base_url = "{stub}/v1"
api_key_env = "SSO_PROVIDER_KEY"

[models.sso-model]
provider = "chat"
upstream = "gpt-ok"
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
    Served { idp, stub, server: Running { child, base }, ledger: dir.join("ledger.db") }
}

fn python(script: &str, args: &[&str]) -> Value {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python").join(script);
    let output = Command::new("python3").arg(path).args(args).output().expect("python3 runs");
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
}
