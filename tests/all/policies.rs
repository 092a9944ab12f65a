//! Identity, policies, rate limits, hot reload and the usage ledger, end to end.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::harness::*;

const TEAM_POLICIES: &str = r#"
[[policy]]
name = "small"
principals = ["team:small"]
[policy.limits]
fuel = 200_000_000
[policy.tools]
allow = ["test.*"]
deny = ["test.fail"]

[[policy]]
name = "big"
principals = ["team:big"]
[policy.limits]
fuel = 40_000_000_000
[policy.tools]
allow = ["test.*"]

[[policy]]
name = "limited"
principals = ["user:rita"]
[policy.limits]
fuel = 1_000_000_000
[policy.rate]
executions_per_minute = 2
"#;

struct Org {
    server: TestServer,
    small: ApiKey,
    big: ApiKey,
    admin: ApiKey,
    nobody: ApiKey,
    rita: ApiKey,
}

fn org() -> Org {
    let small = api_key("small-key", "sam", "small", "member");
    let big = api_key("big-key", "bea", "big", "member");
    let admin = api_key("admin-key", "ada", "big", "admin");
    let nobody = api_key("nobody-key", "nia", "nowhere", "member");
    let rita = api_key("rita-key", "rita", "ops", "member");
    let config = format!(
        "[sandbox]\ntest_capability = true\n{}{}{}{}{}",
        small.entry, big.entry, admin.entry, nobody.entry, rita.entry
    );
    let server = start_server_with(&config, TEAM_POLICIES);
    Org { server, small, big, admin, nobody, rita }
}

async fn usage_as(base: &str, key: &str, query: &str) -> (StatusCode, Value) {
    let response = client().get(format!("{base}/v1/usage?{query}")).bearer_auth(key).send().await.unwrap();
    let status = response.status();
    (status, response.json().await.unwrap())
}

#[tokio::test]
async fn requests_need_a_configured_key() {
    let org = org();
    let base = &org.server.base;
    let (status, body) = post_as(base, None, json!({"code": "1"})).await;
    assert_eq!((status.as_u16(), body["error"]["kind"].as_str()), (401, Some("unauthorized")), "{body}");
    let (status, _) = post_as(base, Some("sg_not_a_real_key"), json!({"code": "1"})).await;
    assert_eq!(status, 401);
    let (status, body) = post_as(base, Some(&org.small.token), json!({"code": "1"})).await;
    assert_eq!((status.as_u16(), body["result"].clone()), (200, json!(1)), "{body}");
    let response = client().post(format!("{base}/v1/execute")).json(&json!({"code": "1"})).send().await.unwrap();
    assert_eq!(response.headers()["www-authenticate"], "Bearer");
    for open in ["healthz", "metrics"] {
        assert_eq!(client().get(format!("{base}/{open}")).send().await.unwrap().status(), 200, "{open}");
    }
}

#[tokio::test]
async fn deny_by_default_and_per_principal_limits() {
    let org = org();
    let base = &org.server.base;
    let (status, body) = post_as(base, Some(&org.nobody.token), json!({"code": "1"})).await;
    assert_eq!((status.as_u16(), body["error"]["kind"].as_str()), (403, Some("forbidden")), "{body}");

    let code = json!({"code": "let s = 0; for (let i = 0; i < 1e6; i++) s += i; return s"});
    let (_, small) = post_as(base, Some(&org.small.token), code.clone()).await;
    let (_, big) = post_as(base, Some(&org.big.token), code.clone()).await;
    assert_eq!(small["error"]["kind"], "out_of_fuel", "{small}");
    assert_eq!(big["result"], json!(499999500000u64), "{big}");

    let (status, body) =
        post_as(base, Some(&org.small.token), json!({"code": "1", "limits": {"fuel": 1_000_000_000u64}})).await;
    assert_eq!(status, 400, "a request cannot raise its policy's limit: {body}");
}

#[tokio::test]
async fn tool_calls_follow_the_callers_policy() {
    let org = org();
    let code = json!({"code": "const r = []; for (const f of [() => tools.test.echo({x: 1}), () => tools.test.fail({message: 'm'})]) { try { r.push(await f()) } catch (e) { r.push(e.kind) } } return r"});
    let (_, small) = post_as(&org.server.base, Some(&org.small.token), code.clone()).await;
    let (_, big) = post_as(&org.server.base, Some(&org.big.token), code).await;
    assert_eq!(small["result"], json!([{"x": 1}, "tool_denied"]), "{small}");
    assert_eq!(big["result"], json!([{"x": 1}, "tool_error"]), "{big}");

    let ledger = rusqlite::Connection::open(org.server.ledger()).unwrap();
    let outcomes: Vec<(String, String)> = ledger
        .prepare("SELECT name, outcome FROM calls WHERE execution_id = ?1 ORDER BY id")
        .unwrap()
        .query_map([small["execution_id"].as_str().unwrap()], |row| Ok((row.get(0)?, row.get(1)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(
        outcomes,
        [("tools.test.echo".to_string(), "ok".to_string()), ("tools.test.fail".to_string(), "tool_denied".to_string())]
    );
}

#[tokio::test]
async fn rate_limits_answer_429_with_retry_after() {
    let org = org();
    for _ in 0..2 {
        let (status, body) = post_as(&org.server.base, Some(&org.rita.token), json!({"code": "1"})).await;
        assert_eq!(status, 200, "{body}");
    }
    let response = client()
        .post(format!("{}/v1/execute", org.server.base))
        .bearer_auth(&org.rita.token)
        .json(&json!({"code": "1"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 429);
    let retry: u64 = response.headers()["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=30).contains(&retry), "{retry}");
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["kind"], "rate_limited");
    let (status, _) = post_as(&org.server.base, Some(&org.small.token), json!({"code": "1"})).await;
    assert_eq!(status, 200, "other principals are not limited");
}

#[tokio::test]
async fn policies_reload_on_change_and_a_broken_file_keeps_the_old_set() {
    let server =
        start_server_with("", "[[policy]]\nname = \"p\"\nprincipals = [\"*\"]\n[policy.limits]\nfuel = 100_000_000\n");
    let spin = json!({"code": "let s = 0; for (let i = 0; i < 1e6; i++) s += i; return s"});
    let (_, before) = post_to(&server.base, spin.clone()).await;
    assert_eq!(before["error"]["kind"], "out_of_fuel");

    std::fs::write(
        server.policy_file(),
        "[[policy]]\nname = \"p\"\nprincipals = [\"*\"]\n[policy.limits]\nfuel = 40_000_000_000\n",
    )
    .unwrap();
    let mut reloaded = false;
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let (_, body) = post_to(&server.base, spin.clone()).await;
        if body["ok"] == true {
            reloaded = true;
            break;
        }
    }
    assert!(reloaded, "the new policy took effect");

    std::fs::write(
        server.policy_file(),
        "[[policy]]\nname = \"p\"\nprincipals = [\"*\"]\n[policy.limits]\nfuel = 0\nbogus = 1\n",
    )
    .unwrap();
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let (status, body) = post_to(&server.base, spin).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["ok"], true, "the last good policy set stays in force: {body}");
}

#[tokio::test]
async fn usage_totals_equal_the_records_and_members_see_only_their_own() {
    let org = org();
    let base = &org.server.base;
    let mut fuel = std::collections::HashMap::<&str, u64>::new();
    for (who, key, code) in [
        ("bea", &org.big.token, "return 1"),
        ("bea", &org.big.token, "let s = 0; for (let i = 0; i < 1000; i++) s += i; return s"),
        ("ada", &org.admin.token, "await tools.test.echo({}); return 2"),
        ("sam", &org.small.token, "while (true) {}"),
    ] {
        let (status, body) = post_as(base, Some(key), json!({"code": code})).await;
        assert_eq!(status, 200, "{body}");
        *fuel.entry(who).or_default() += body["usage"]["fuel"].as_u64().unwrap();
    }
    let (status, report) = usage_as(base, &org.admin.token, "group_by=user").await;
    assert_eq!(status, 200, "{report}");
    let rows = report["rows"].as_array().unwrap();
    let users: Vec<&str> = rows.iter().map(|r| r["group"].as_str().unwrap()).collect();
    assert_eq!(users, ["ada", "bea", "sam"]);
    for row in rows {
        assert_eq!(row["fuel"].as_u64().unwrap(), fuel[row["group"].as_str().unwrap()], "{row}");
    }
    assert_eq!(report["totals"]["executions"], 4);
    assert_eq!(report["totals"]["host_calls"], 1);
    assert_eq!(report["totals"]["fuel"].as_u64().unwrap(), fuel.values().sum::<u64>());

    let (_, team) = usage_as(base, &org.admin.token, "group_by=team").await;
    assert_eq!(team["rows"][0]["group"], "big");
    assert_eq!(team["rows"][0]["executions"], 3);

    let (status, mine) = usage_as(base, &org.big.token, "group_by=day").await;
    assert_eq!(status, 200);
    assert_eq!(mine["totals"]["executions"], 2, "a member sees only their own usage: {mine}");
    let (status, other) = usage_as(base, &org.big.token, "user=ada").await;
    assert_eq!((status.as_u16(), other["error"]["kind"].as_str()), (403, Some("forbidden")));
    let (status, bad) = usage_as(base, &org.admin.token, "group_by=colour").await;
    assert_eq!((status.as_u16(), bad["error"]["kind"].as_str()), (400, Some("invalid_request")));
    let (_, none) = usage_as(base, &org.admin.token, "since=2999-01-01").await;
    assert_eq!(none["rows"], json!([]));
}

/// `[[policy.rules]]` conditions decide each call inside the sandbox by its
/// arguments, for tools and `model.chat`, in JavaScript and Python; a condition that
/// cannot be decided denies, naming the rule.
#[tokio::test]
async fn rule_conditions_decide_each_call_by_its_arguments() {
    let stub = crate::stub::Stub::start();
    let key = api_key("rules-key", "rae", "platform", "member");
    let policy = r#"
[[policy]]
name = "rules"
principals = ["*"]
[policy.limits]
[policy.tools]
allow = ["test.*"]
[policy.models]
tiers = ["economy"]
[[policy.rules]]
tools = ["test.echo"]
when = "args.base == 'main' && !args.repo.startsWith(principal.team + '/')"
decision = "deny"
reason = "only your own team's repositories"
[[policy.rules]]
models = ["cheap"]
when = "size(args.messages) > 1"
decision = "deny"
"#;
    std::env::set_var("SANDGATE_RULES_PROVIDER_KEY", "sk-stub");
    let config = format!(
        "[sandbox]\ntest_capability = true\n{}{}",
        key.entry,
        stub.openai_config("SANDGATE_RULES_PROVIDER_KEY", &[("cheap", "gpt-cheap-ok", "economy")])
    );
    let server = start_server_with(&config, policy);
    let js = r#"
const out = [];
for (const args of [{base: 'dev', repo: 'sales/x'}, {base: 'main', repo: 'platform/x'}, {base: 'main', repo: 'sales/x'}, {base: 'main'}]) {
  try { out.push((await tools.test.echo(args)).repo ?? 'ok') } catch (e) { out.push(e.kind + ': ' + e.message) }
}
for (const messages of [[{role: 'user', content: 'hi'}], [{role: 'user', content: 'a'}, {role: 'user', content: 'b'}]]) {
  try { out.push((await model.chat({model: 'cheap', messages})).model) } catch (e) { out.push(e.kind + ': ' + e.message) }
}
return out"#;
    let (status, body) = post_as(&server.base, Some(&key.token), json!({ "code": js })).await;
    assert_eq!(status, 200, "{body}");
    let out: Vec<String> = body["result"]
        .as_array()
        .unwrap_or_else(|| panic!("{body}"))
        .iter()
        .map(|v| v.as_str().unwrap().into())
        .collect();
    assert_eq!(&out[..2], ["sales/x", "platform/x"], "{body}");
    assert!(out[2].starts_with("tool_denied: deny: ") && out[2].contains("rules[1] deny when"), "{body}");
    assert!(out[2].contains("only your own team's repositories"), "{body}");
    assert!(out[3].starts_with("tool_denied:") && out[3].contains("could not be decided: No such key: repo"), "{body}");
    assert_eq!(out[4], "cheap", "{body}");
    assert!(out[5].starts_with("model_denied: deny: ") && out[5].contains("size(args.messages) > 1"), "{body}");
    // Only the calls the rules let through reached the provider.
    assert_eq!(stub.requests().len(), 1);

    let python = r#"
out = []
for args in [{"base": "main", "repo": "platform/y"}, {"base": "main", "repo": "sales/y"}]:
    try:
        out.append((await tools.test.echo(**args))["repo"])
    except Exception as e:
        out.append(str(e))
out"#;
    let (status, body) = post_as(&server.base, Some(&key.token), json!({ "code": python, "language": "python" })).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["result"][0], "platform/y", "{body}");
    assert!(body["result"][1].as_str().unwrap_or_default().contains("rules[1] deny when"), "{body}");

    // The ledger records the refused call as `tool_denied`, under the execution.
    let rows =
        ledger_rows_within(&server.ledger(), "SELECT outcome FROM calls WHERE name = 'tools.test.echo' ORDER BY id", 6);
    let outcomes: Vec<&str> = rows.iter().map(|r| r[0].as_str().unwrap()).collect();
    assert_eq!(outcomes, ["ok", "ok", "tool_denied", "tool_denied", "ok", "tool_denied"]);

    // The console's explain form decides a call with the arguments given.
    let signed_in = client()
        .post(format!("{}/ui/login", server.base))
        .header("content-type", "application/json")
        .body(json!({ "key": key.token }).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(signed_in.status(), StatusCode::NO_CONTENT);
    let cookie = signed_in.headers()["set-cookie"].to_str().unwrap().split(';').next().unwrap().to_string();
    let explain = |args: &str| {
        let query: String = form_urlencoded::Serializer::new(String::new())
            .extend_pairs([("what", "tool"), ("name", "test.echo"), ("args", args)])
            .finish();
        let request = client().get(format!("{}/ui/policies?{query}", server.base)).header("cookie", cookie.clone());
        async move {
            let response = request.send().await.unwrap();
            (response.status(), response.text().await.unwrap())
        }
    };
    let (status, page) = explain(r#"{"base": "main", "repo": "sales/x"}"#).await;
    assert_eq!(status, 200);
    assert!(page.contains("deny: user rae (team platform), tool test.echo"), "{page}");
    assert!(page.contains("rules[1] deny when"), "the deciding condition is named: {page}");
    let (_, page) = explain(r#"{"base": "main", "repo": "platform/x"}"#).await;
    assert!(page.contains("allow: user rae (team platform), tool test.echo"), "{page}");
    let (_, page) = explain("{nope").await;
    assert!(page.contains("The arguments are not JSON"), "{page}");
}
