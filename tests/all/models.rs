//! The model proxy against the local provider stub, with the official SDKs as clients
//! and from sandboxed code.

use std::sync::OnceLock;

use serde_json::{json, Value};

use crate::harness::*;
use crate::stub::{python_client, require_python_sdks, Stub};

struct Proxy {
    stub: Stub,
    server: TestServer,
    rich: String,
    poor: String,
    thrifty: String,
    economy_only: String,
}

const POLICIES: &str = r#"
[[policy]]
name = "everyone"
principals = ["*"]
except = ["user:eco"]
[policy.limits]
[policy.models]
tiers = ["economy", "standard", "frontier"]

[[policy]]
name = "poor"
principals = ["user:poor"]
[policy.budget]
scope = "user"
tokens_per_day = 20

[[policy]]
name = "thrifty"
principals = ["user:thrifty"]
[policy.budget]
scope = "team"
usd_per_day = 0.4

[[policy]]
name = "economy only"
principals = ["user:eco"]
[policy.limits]
[policy.models]
tiers = ["economy"]
"#;

/// One proxy in front of one stub, shared by the tests in this file.
fn proxy() -> &'static Proxy {
    static PROXY: OnceLock<Proxy> = OnceLock::new();
    PROXY.get_or_init(|| {
        let stub = Stub::start();
        // Providers read their keys from the environment when the config is loaded.
        std::env::set_var("SANDGATE_TEST_PROVIDER_KEY", "sk-stub-test");
        let ApiKey { token: rich, entry: rich_entry } = api_key("rich", "rich", "labs", "member");
        let ApiKey { token: poor, entry: poor_entry } = api_key("poor", "poor", "labs", "member");
        let ApiKey { token: thrifty, entry: thrifty_entry } = api_key("thrifty", "thrifty", "frugal", "member");
        let ApiKey { token: economy_only, entry: eco_entry } = api_key("eco", "eco", "labs", "member");
        let config = format!(
            r#"
[sandbox]
test_capability = true

[providers.openai]
kind = "openai"
base_url = "{base}/v1"
api_key_env = "SANDGATE_TEST_PROVIDER_KEY"
timeout_ms = 1500

[providers.anthropic]
kind = "anthropic"
base_url = "{base}"
api_key_env = "SANDGATE_TEST_PROVIDER_KEY"

[models.cheap-broken]
provider = "openai"
upstream = "gpt-cheap-500"
tier = "economy"
input_per_mtok = 0.1
output_per_mtok = 0.4

[models.cheap]
provider = "openai"
upstream = "gpt-cheap-ok"
tier = "economy"
input_per_mtok = 0.15
output_per_mtok = 0.6

[models.mid]
provider = "openai"
upstream = "gpt-mid-ok"
tier = "standard"
input_per_mtok = 1.0
output_per_mtok = 4.0

[models.claude]
provider = "anthropic"
upstream = "claude-ok"
tier = "standard"
input_per_mtok = 3.0
output_per_mtok = 15.0

[models.busy]
provider = "openai"
upstream = "gpt-busy-429"
tier = "frontier"
input_per_mtok = 10.0
output_per_mtok = 30.0

[models.slow]
provider = "openai"
upstream = "gpt-slow-ok+slow4000"
tier = "frontier"
input_per_mtok = 10.0
output_per_mtok = 30.0

[models.big]
provider = "openai"
upstream = "gpt-big-ok"
tier = "frontier"
input_per_mtok = 10.0
output_per_mtok = 30.0

[models.flaky-stream]
provider = "openai"
upstream = "gpt-flaky-ok+midstream-fail"
tier = "frontier"
input_per_mtok = 10.0
output_per_mtok = 30.0

[models.silent]
provider = "openai"
upstream = "gpt-silent-ok+nousage"
tier = "frontier"
input_per_mtok = 10.0
output_per_mtok = 30.0

[models.acct-openai]
provider = "openai"
upstream = "gpt-acct-ok"
tier = "standard"
input_per_mtok = 1.0
output_per_mtok = 4.0

[models.acct-claude]
provider = "anthropic"
upstream = "claude-acct-ok"
tier = "standard"
input_per_mtok = 3.0
output_per_mtok = 15.0

[tiers.economy]
models = ["cheap-broken", "cheap"]
[tiers.standard]
models = ["mid", "claude", "acct-openai", "acct-claude"]
[tiers.frontier]
models = ["busy", "slow", "big", "flaky-stream", "silent"]

[router]
retries = 1
backoff_ms = 10
breaker_failures = 1000
downgrade_below_usd = 0.5
default_max_tokens = 16

{rich_entry}{poor_entry}{thrifty_entry}{eco_entry}"#,
            base = stub.base
        );
        let server = start_server_with(&config, POLICIES);
        Proxy { stub, server, rich, poor, thrifty, economy_only }
    })
}

fn openai(key: &str, model: &str, message: &str, extra: &[&str]) -> Value {
    let base = format!("{}/v1", proxy().server.base);
    let mut args = vec!["--base-url", &base, "--api-key", key, "--model", model, "--message", message];
    args.extend_from_slice(extra);
    python_client("openai_client.py", &args)
}

fn anthropic(key: &str, model: &str, message: &str, extra: &[&str]) -> Value {
    let base = proxy().server.base.clone();
    let mut args = vec!["--base-url", &base, "--api-key", key, "--model", model, "--message", message];
    args.extend_from_slice(extra);
    python_client("anthropic_client.py", &args)
}

/// Model calls are committed just after their response is sent: waits until `sql`
/// returns at least `at_least` rows (at most 5 s), then returns them.
fn ledger_rows_once(sql: &str, at_least: usize) -> Vec<Vec<Value>> {
    ledger_rows_within(&proxy().server.ledger(), sql, at_least)
}

fn ledger_rows(sql: &str) -> Vec<Vec<Value>> {
    ledger_rows_at(&proxy().server.ledger(), sql)
}

#[test]
fn openai_and_anthropic_sdks_work_through_the_proxy_streaming_or_not() {
    require_python_sdks();
    let p = proxy();
    let whole = openai(&p.rich, "mid", "hello proxy world", &[]);
    assert_eq!(whole["ok"], true, "{whole}");
    assert_eq!(whole["text"], "echo: hello proxy world");
    assert_eq!(whole["usage"], json!({"input": 3, "output": 4}));

    let streamed = openai(&p.rich, "mid", "stream me some words please", &["--stream"]);
    assert_eq!(streamed["ok"], true, "{streamed}");
    assert_eq!(streamed["text"], "echo: stream me some words please");
    assert_eq!(streamed["usage"], json!({"input": 5, "output": 6}));

    let claude = anthropic(&p.rich, "claude", "hi from anthropic", &[]);
    assert_eq!(
        (claude["ok"].clone(), claude["text"].clone()),
        (json!(true), json!("echo: hi from anthropic")),
        "{claude}"
    );
    let claude_stream = anthropic(&p.rich, "claude", "streamed anthropic reply", &["--stream"]);
    assert_eq!(claude_stream["text"], "echo: streamed anthropic reply", "{claude_stream}");
    assert_eq!(claude_stream["usage"], json!({"input": 3, "output": 4}));

    // A model of another format is translated both ways, streaming or not.
    let crossed = anthropic(&p.rich, "mid", "across formats", &[]);
    assert_eq!(
        (crossed["ok"].clone(), crossed["text"].clone()),
        (json!(true), json!("echo: across formats")),
        "{crossed}"
    );
    assert_eq!(
        (crossed["model"].clone(), crossed["usage"].clone()),
        (json!("gpt-mid-ok"), json!({"input": 2, "output": 3}))
    );
    let crossed = anthropic(&p.rich, "mid", "across formats streaming", &["--stream"]);
    assert_eq!(crossed["text"], "echo: across formats streaming", "{crossed}");
    assert_eq!(crossed["usage"], json!({"input": 3, "output": 4}), "{crossed}");
    let crossed = openai(&p.rich, "claude", "the other way", &["--stream"]);
    assert_eq!(
        (crossed["ok"].clone(), crossed["text"].clone()),
        (json!(true), json!("echo: the other way")),
        "{crossed}"
    );
    assert_eq!(crossed["usage"], json!({"input": 3, "output": 4}), "{crossed}");
}

#[test]
fn tiers_auto_and_fallback_before_the_first_byte() {
    require_python_sdks();
    let p = proxy();
    // economy: the first model answers 500 (twice: one retry), the second serves.
    let economy = openai(&p.rich, "tier:economy", "cheap please", &[]);
    assert_eq!(economy["ok"], true, "{economy}");
    assert_eq!(economy["model"], "gpt-cheap-ok");
    // auto picks the cheapest tier the caller may use.
    let auto = openai(&p.rich, "auto", "whatever is cheapest", &[]);
    assert_eq!(auto["model"], "gpt-cheap-ok", "{auto}");
    // frontier: 429, then a timeout, then an answer.
    let frontier = openai(&p.rich, "tier:frontier", "the best", &["--stream"]);
    assert_eq!(frontier["ok"], true, "{frontier}");
    assert_eq!(frontier["model"], "gpt-big-ok");
    let chain =
        ledger_rows_once("SELECT fallback_chain FROM model_calls WHERE model = 'big' ORDER BY id DESC LIMIT 1", 1);
    let chain: Vec<String> = serde_json::from_str(chain[0][0].as_str().unwrap()).unwrap();
    assert_eq!(chain.len(), 4, "{chain:?}");
    assert!(chain[0].starts_with("busy: HTTP 429") && chain[2].starts_with("slow: timed out"), "{chain:?}");
}

#[test]
fn no_fallback_after_the_first_streamed_byte() {
    require_python_sdks();
    let p = proxy();
    let before = p.stub.requests().iter().filter(|r| r.body["model"] == "gpt-big-ok").count();
    let broken = openai(&p.rich, "flaky-stream", "break in the middle of this", &["--stream"]);
    assert_eq!(broken["ok"], false, "the client sees the broken stream: {broken}");
    assert!(broken["partial_text"].as_str().unwrap_or_default().starts_with("echo"), "{broken}");
    let after = p.stub.requests().iter().filter(|r| r.body["model"] == "gpt-big-ok").count();
    assert_eq!(before, after, "no other model was tried once bytes had been sent");
    std::thread::sleep(std::time::Duration::from_millis(300));
    let status =
        ledger_rows_once("SELECT status FROM model_calls WHERE model = 'flaky-stream' ORDER BY id DESC LIMIT 1", 1);
    assert!(status[0][0].as_str().unwrap().starts_with("stream_"), "{status:?}");
}

#[test]
fn streamed_usage_is_exact_or_counted_and_the_ledger_matches_the_stub() {
    require_python_sdks();
    let p = proxy();
    let silent = openai(&p.rich, "silent", "no usage chunk here", &["--stream"]);
    assert_eq!(silent["ok"], true, "{silent}");
    std::thread::sleep(std::time::Duration::from_millis(300));
    let rows =
        ledger_rows_once("SELECT status, input_tokens, output_tokens FROM model_calls WHERE model = 'silent'", 1);
    let row = rows.last().unwrap();
    assert_eq!(row[0], "ok_estimated");
    assert!(row[2].as_i64().unwrap() > 0, "output counted with the tokenizer: {row:?}");

    // A mixed run on models no other test uses: the ledger equals what the stub reported.
    for (model, stream) in [("acct-openai", false), ("acct-openai", true)] {
        let extra: &[&str] = if stream { &["--stream"] } else { &[] };
        assert_eq!(openai(&p.rich, model, "count these words exactly", extra)["ok"], true);
    }
    for (model, stream) in [("acct-claude", false), ("acct-claude", true)] {
        let extra: &[&str] = if stream { &["--stream"] } else { &[] };
        assert_eq!(anthropic(&p.rich, model, "and these ones too please", extra)["ok"], true);
    }
    std::thread::sleep(std::time::Duration::from_millis(500));
    let reported = p.stub.reported_usage();
    for (upstream, model) in [("gpt-acct-ok", "acct-openai"), ("claude-acct-ok", "acct-claude")] {
        ledger_rows_once(&format!("SELECT id FROM model_calls WHERE model = '{model}' AND status = 'ok'"), 2);
        let rows = ledger_rows(&format!(
            "SELECT SUM(input_tokens), SUM(output_tokens), COUNT(*) FROM model_calls WHERE model = '{model}' AND status = 'ok'"
        ));
        assert_eq!(rows[0][2], 2, "{model}: {rows:?}");
        let ledger = (rows[0][0].as_u64().unwrap(), rows[0][1].as_u64().unwrap());
        assert_eq!(Some(ledger), reported.get(upstream).copied(), "{model}");
    }
}

#[test]
fn budgets_downgrades_denials_and_spoofed_users() {
    require_python_sdks();
    let p = proxy();
    // 20 tokens a day: a call reserves its input plus 16 output tokens and settles at
    // what the stub reports (3 + 4), so the second call no longer fits.
    let mut outcomes = Vec::new();
    for _ in 0..4 {
        outcomes.push(openai(&p.poor, "mid", "a b c", &[]));
    }
    assert_eq!(outcomes[0]["ok"], true, "{:?}", outcomes[0]);
    let refused = outcomes.iter().find(|o| o["ok"] == false).expect("the budget runs out");
    assert_eq!(refused["status"], 429, "{refused}");
    assert!(refused["error"].as_str().unwrap().contains("budget"), "{refused}");

    // $0.40 left is under the router's $0.50 threshold: standard steps down to economy.
    let downgraded = openai(&p.thrifty, "tier:standard", "hello", &[]);
    assert_eq!(downgraded["ok"], true, "{downgraded}");
    assert_eq!(downgraded["model"], "gpt-cheap-ok", "{downgraded}");

    let denied = openai(&p.economy_only, "big", "not for you", &[]);
    assert_eq!((denied["ok"].clone(), denied["status"].clone()), (json!(false), json!(403)), "{denied}");
    let listed = get_json(&format!("{}/v1/models", p.server.base), &p.economy_only);
    let ids: Vec<&str> = listed["data"].as_array().unwrap().iter().map(|m| m["id"].as_str().unwrap()).collect();
    assert!(ids.contains(&"cheap") && ids.contains(&"tier:economy") && !ids.contains(&"big"), "{ids:?}");

    let spoofed = openai(&p.rich, "mid", "who am i", &["--user", "mallory"]);
    assert_eq!(spoofed["ok"], true);
    let rows = ledger_rows_once("SELECT user, tags FROM model_calls WHERE tags LIKE '%mallory%'", 1);
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!(rows[0][0], "rich", "attributed to the key's user, not the body's");
}

#[tokio::test]
async fn sandboxed_code_calls_models_through_the_same_router() {
    let p = proxy();
    let code = "const a = await model.chat({tier: 'standard', messages: [{role: 'system', content: 'be brief'}, {role: 'user', content: 'hi from the sandbox'}]});\nconst b = await model.chat({model: 'claude', messages: [{role: 'user', content: 'and anthropic'}], max_tokens: 50});\nlet denied; try { await model.chat({model: 'nope', messages: [{role: 'user', content: 'x'}]}) } catch (e) { denied = e.kind }\nreturn {a, b, denied}";
    let (status, body) = post_as(&p.server.base, Some(&p.rich), json!({"code": code})).await;
    assert_eq!(status, 200, "{body}");
    let result = &body["result"];
    assert_eq!(result["a"]["content"], "echo: hi from the sandbox", "{body}");
    assert_eq!(result["a"]["model"], "mid");
    assert_eq!(result["a"]["tier"], "standard");
    assert_eq!(result["b"]["content"], "echo: and anthropic");
    assert_eq!(result["b"]["usage"]["input_tokens"], 2);
    assert_eq!(result["denied"], "invalid_request");
    let id = body["execution_id"].as_str().unwrap();
    let rows =
        ledger_rows_once(&format!("SELECT model, user FROM model_calls WHERE execution_id = '{id}' ORDER BY id"), 2);
    assert_eq!(rows, vec![vec![json!("mid"), json!("rich")], vec![json!("claude"), json!("rich")]]);
}
