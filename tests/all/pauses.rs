//! Executions that pause at a held call and go on elsewhere: the guest returns at the
//! pause, its memory and bookkeeping are all there is, and another sandbox (another
//! replica, after a restart) resumes it from them, making no call twice.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use sandgate::error::Kind;
use sandgate::limits::Limits;
use sandgate::request::Language;
use sandgate::sandbox::{
    Call, Door, Doors, ExecError, Hold, MemoryImage, Outcome, Paused, Pending, Resume, Sandbox, SandboxConfig, Started,
};
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

use crate::harness::cache_dir;

fn sandbox() -> Sandbox {
    let mut config: SandboxConfig = sandgate::config::Config::default().sandbox;
    config.cache_dir = Some(cache_dir().into());
    Sandbox::new(config).expect("the sandbox builds")
}

/// `x.echo` answers its arguments; `x.guarded` is held until cleared. Every call
/// the door makes is counted, by name.
#[derive(Default)]
pub(crate) struct Counted {
    pub echo: AtomicU32,
    pub guarded: AtomicU32,
}

struct Tools(Arc<Counted>);

impl Door for Tools {
    fn call(&self, call: Call) -> Result<Started, ExecError> {
        let counted = self.0.clone();
        match call.method.as_str() {
            "x.echo" => {
                counted.echo.fetch_add(1, Ordering::SeqCst);
                let pending: Pending = Box::pin(async move { Ok(call.args) });
                Ok(pending.into())
            }
            "x.guarded" if call.cleared.is_none() => {
                Ok(Started::Held(Hold { waits_for: "approval".into(), detail: json!({"why": "test"}) }, call))
            }
            "x.guarded" => {
                counted.guarded.fetch_add(1, Ordering::SeqCst);
                let cleared = call.cleared.clone().unwrap_or_default().to_string();
                let pending: Pending = Box::pin(async move { Ok(json!({"args": call.args, "cleared": cleared})) });
                Ok(pending.into())
            }
            other => Err(ExecError::new(Kind::ToolDenied, format!("no {other}"))),
        }
    }
}

fn doors(counted: &Arc<Counted>) -> Doors {
    Doors::default().with("tools", Arc::new(Tools(counted.clone())))
}

pub(crate) async fn start(sandbox: &Sandbox, code: &str, language: Language, counted: &Arc<Counted>) -> Outcome {
    let mut job = sandgate::sandbox::Job::new(code, language, Limits::default());
    job.doors = doors(counted);
    sandbox.execute(job, None).await.expect("it runs")
}

/// The pause as a store keeps it: JSON and the memory's bytes, read back.
pub(crate) fn kept(outcome: &Outcome) -> Paused {
    let paused = outcome.paused.as_ref().unwrap_or_else(|| panic!("not paused: {outcome:?}"));
    let memory = paused.memory.encode();
    let mut back: Paused = serde_json::from_str(&serde_json::to_string(paused).unwrap()).unwrap();
    back.memory = MemoryImage::decode(&memory).expect("the memory reads back");
    back
}

pub(crate) async fn resume(
    sandbox: &Sandbox,
    paused: Paused,
    decisions: Vec<(u32, Result<Arc<str>, ExecError>)>,
    counted: &Arc<Counted>,
) -> Outcome {
    let id: Arc<str> = "resumed-execution".into();
    let resume =
        Resume { paused, decisions, doors: doors(counted), limits: Limits::default(), id, trace: Default::default() };
    let admission = sandbox.admit().unwrap();
    sandbox.resume(admission, resume, None, &CancellationToken::new()).await.expect("it resumes")
}

pub(crate) const JS: &str = r#"
console.log('before');
const a = await tools.x.echo({n: 1});
let b;
try { b = await tools.x.guarded({n: 2}) } catch (e) { b = {denied: e.kind + ': ' + e.message} }
const c = await tools.x.echo({n: 3});
console.log('after');
return {a: a.n, b, c: c.n, random: typeof Math.random()}"#;

pub(crate) const PYTHON: &str = r#"
print("before")
a = await tools.x.echo(n=1)
try:
    b = await tools.x.guarded(n=2)
except Exception as e:
    b = {"denied": str(e)}
c = await tools.x.echo(n=3)
print("after")
{"a": a["n"], "b": b, "c": c["n"]}"#;

#[tokio::test]
async fn a_held_call_pauses_and_resumes_on_another_sandbox_with_no_call_made_twice() {
    for (language, code) in [(Language::Javascript, JS), (Language::Python, PYTHON)] {
        let first = sandbox();
        let here = Arc::new(Counted::default());
        let outcome = start(&first, code, language, &here).await;
        assert!(!outcome.ok && outcome.error.is_none(), "{language:?}: {outcome:?}");
        let paused = kept(&outcome);
        assert_eq!(paused.held.len(), 1, "{language:?}");
        let held = &paused.held[0];
        assert_eq!((held.name.as_str(), &held.args), ("tools.x.guarded", &json!({"n": 2})), "{language:?}");
        assert_eq!(held.hold.waits_for, "approval");
        assert_eq!(paused.logs.iter().map(|l| l.message.as_str()).collect::<Vec<_>>(), ["before"]);
        assert_eq!((here.echo.load(Ordering::SeqCst), here.guarded.load(Ordering::SeqCst)), (1, 0));
        let held_id = held.id;
        drop(first);

        // Another sandbox, as another replica would: approved.
        let elsewhere = sandbox();
        let there = Arc::new(Counted::default());
        let done = resume(&elsewhere, paused.clone(), vec![(held_id, Ok("approval-1".into()))], &there).await;
        assert!(done.ok, "{language:?}: {done:?}");
        let result: Value = serde_json::from_str(done.result.as_ref().unwrap().get()).unwrap();
        assert_eq!(result["a"], 1, "{language:?}: {result}");
        assert_eq!(result["b"], json!({"args": {"n": 2}, "cleared": "approval-1"}), "{language:?}: {result}");
        assert_eq!(result["c"], 3, "{language:?}: {result}");
        // The first echo was made before the pause and never again.
        assert_eq!((there.echo.load(Ordering::SeqCst), there.guarded.load(Ordering::SeqCst)), (1, 1));
        let lines: Vec<&str> = done.logs.iter().map(|l| l.message.as_str()).collect();
        assert_eq!(lines, ["before", "after"], "{language:?}: the outcome carries every line");
        assert!(done.usage.fuel > outcome.usage.fuel, "usage counts both parts");
        assert_eq!(done.usage.host_calls, 3);

        // The same pause, refused: the call rejects in the code with the error.
        let refused = ExecError::new(Kind::ToolDenied, "denied by lee: not on a Friday");
        let denied = resume(&elsewhere, paused, vec![(held_id, Err(refused))], &there).await;
        assert!(denied.ok, "{language:?}: {denied:?}");
        let result: Value = serde_json::from_str(denied.result.as_ref().unwrap().get()).unwrap();
        let shown = result["b"]["denied"].as_str().unwrap_or_default();
        assert!(shown.contains("not on a Friday"), "{language:?}: {result}");
    }
}

#[tokio::test]
async fn an_execution_pauses_only_once_nothing_else_is_in_flight_and_can_pause_again() {
    let sandbox = sandbox();
    let counted = Arc::new(Counted::default());
    let code = r#"
const [held, echoed] = await Promise.all([tools.x.guarded({n: 1}), tools.x.echo({n: 2})]);
const again = await tools.x.guarded({n: 3});
return [held.cleared, echoed.n, again.cleared]"#;
    let outcome = start(&sandbox, code, Language::Javascript, &counted).await;
    let paused = kept(&outcome);
    assert_eq!(paused.held.iter().map(|h| h.args["n"].clone()).collect::<Vec<_>>(), [json!(1)]);
    assert_eq!(counted.echo.load(Ordering::SeqCst), 1, "the echo ran before the pause");
    let first = paused.held[0].id;
    let again = resume(&sandbox, paused, vec![(first, Ok("one".into()))], &counted).await;
    let paused = kept(&again);
    assert_eq!(paused.held.iter().map(|h| h.args["n"].clone()).collect::<Vec<_>>(), [json!(3)]);
    let second = paused.held[0].id;
    // A decision for a call that is not held changes nothing; the held one is decided.
    let done = resume(&sandbox, paused, vec![(999, Ok("nothing".into())), (second, Ok("two".into()))], &counted).await;
    assert!(done.ok, "{done:?}");
    assert_eq!(done.result.unwrap().get(), r#"["one",2,"two"]"#);
    assert_eq!((counted.echo.load(Ordering::SeqCst), counted.guarded.load(Ordering::SeqCst)), (1, 2));
}

#[tokio::test]
async fn a_resumed_execution_keeps_its_limits() {
    let sandbox = sandbox();
    let counted = Arc::new(Counted::default());
    let code = "await tools.x.guarded({}); let s = 0; for (;;) { s++ }";
    let outcome = start(&sandbox, code, Language::Javascript, &counted).await;
    let paused = kept(&outcome);
    let id = paused.held[0].id;
    let limits = Limits { fuel: 50_000_000, ..Limits::default() };
    let resume = Resume {
        paused,
        decisions: vec![(id, Ok("a".into()))],
        doors: doors(&counted),
        limits,
        id: "x".into(),
        trace: Default::default(),
    };
    let done = sandbox.resume(sandbox.admit().unwrap(), resume, None, &CancellationToken::new()).await.unwrap();
    assert_eq!(done.error.as_ref().map(|e| e.kind), Some(Kind::OutOfFuel), "{done:?}");
    // A memory image that was not made by encode is refused, not trusted.
    assert!(MemoryImage::decode(b"short").is_none());
    assert!(MemoryImage::decode(&[0u8; 8 + 4100]).is_none());
}

pub mod over_http {
    use std::time::Duration;

    use reqwest::{Method, StatusCode};
    use serde_json::{json, Value};

    use crate::harness::*;

    pub const POLICY: &str = r#"
[[policy]]
name = "agents"
principals = ["*"]
[policy.limits]
wall_ms = 20_000
[policy.tools]
allow = ["test.*"]
[[policy.rules]]
tools = ["test.echo"]
when = "has(args.base) && args.base == 'main'"
decision = "approve"
approvers = ["team:leads"]
reason = "merges into main need a lead"
[[policy.rules]]
tools = ["test.whoami"]
decision = "approve"
approvers = ["team:leads"]
expires_after_s = 1
"#;

    pub const MERGE: &str = r#"
console.log('start');
const dev = await tools.test.echo({base: 'dev', n: 1});
let main;
try { main = await tools.test.echo({base: 'main', n: 2}) } catch (e) { main = e.kind + ': ' + e.message }
console.log('end');
return {dev: dev.n, main}"#;

    async fn execute(base: &str, key: &str, body: Value) -> (StatusCode, Value) {
        call(Method::POST, format!("{base}/v1/execute"), key, Some(body)).await
    }

    /// A server with the test tools, `policy` and `extra` configuration, and two keys:
    /// dana (team platform) runs the code, lee (team leads) approves.
    pub struct Org {
        pub server: TestServer,
        pub dev: ApiKey,
        pub lead: ApiKey,
    }

    impl Org {
        pub fn start(policy: &str, extra: &str) -> Self {
            let dev = api_key("dev-key", "dana", "platform", "member");
            let lead = api_key("lead-key", "lee", "leads", "member");
            let config = format!("[sandbox]\ntest_capability = true\n{}{}{extra}", dev.entry, lead.entry);
            Org { server: start_server_with(&config, policy), dev, lead }
        }

        /// Runs `code` as dana and checks it paused (202): its execution's id and the
        /// id of the first approval it waits for.
        pub async fn pause(&self, code: &str) -> (String, String) {
            let (status, paused) = execute(&self.server.base, &self.dev.token, json!({"code": code})).await;
            assert_eq!(status, StatusCode::ACCEPTED, "{paused}");
            let id = paused["execution_id"].as_str().unwrap().to_string();
            (id, paused["approvals"][0]["id"].as_str().unwrap().to_string())
        }

        /// lee decides `approval` (`approve` or `deny`).
        pub async fn decide(&self, approval: &str, decision: &str) -> (StatusCode, Value) {
            let url = format!("{}/v1/approvals/{approval}", self.server.base);
            call(Method::POST, url, &self.lead.token, Some(json!({"decision": decision}))).await
        }

        /// dana's execution `id`, once it ended.
        pub async fn ended(&self, id: &str) -> Value {
            ended(&self.server.base, &self.dev.token, id).await
        }
    }

    /// Polls the execution's handle until it is neither running nor paused.
    pub async fn ended(base: &str, key: &str, id: &str) -> Value {
        for _ in 0..200 {
            let (status, view) = call(Method::GET, format!("{base}/v1/executions/{id}"), key, None).await;
            assert_eq!(status, StatusCode::OK, "{view}");
            if view["status"] != "paused" && view["status"] != "running" {
                return view;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("execution {id} did not end");
    }

    #[tokio::test]
    async fn a_call_that_needs_a_lead_pauses_until_a_lead_decides() {
        let dev = api_key("dev-key", "dana", "platform", "member");
        let peer = api_key("peer-key", "pete", "platform", "member");
        let lead = api_key("lead-key", "lee", "leads", "member");
        let config = format!("[sandbox]\ntest_capability = true\n{}{}{}", dev.entry, peer.entry, lead.entry);
        let server = start_server_with(&config, POLICY);
        let base = server.base.clone();

        // A call into main pauses the execution: 202, the approval and where to decide it.
        let (status, paused) = execute(&base, &dev.token, json!({"code": MERGE})).await;
        assert_eq!(status, StatusCode::ACCEPTED, "{paused}");
        assert_eq!(paused["status"], "paused", "{paused}");
        let id = paused["execution_id"].as_str().unwrap().to_string();
        let approval = paused["approvals"][0].clone();
        let approval_id = approval["id"].as_str().unwrap().to_string();
        assert_eq!(approval["tool"], "tools.test.echo", "{paused}");
        assert!(approval["url"].as_str().unwrap().ends_with(&format!("/ui/approvals/{approval_id}")), "{paused}");
        assert_eq!(paused["logs"][0]["message"], "start");
        let (_, view) = call(Method::GET, format!("{base}/v1/executions/{id}"), &dev.token, None).await;
        assert_eq!(view["status"], "paused", "{view}");

        // Who sees it: the lead (an approver) and the caller; not a peer.
        let list = |key: String| {
            let base = base.clone();
            async move { call(Method::GET, format!("{base}/v1/approvals"), &key, None).await.1 }
        };
        let seen = list(lead.token.clone()).await;
        assert_eq!(seen["approvals"][0]["id"], approval_id.as_str(), "{seen}");
        assert_eq!(seen["approvals"][0]["args"], json!({"base": "main", "n": 2}), "{seen}");
        assert!(seen["approvals"][0]["reason"].as_str().unwrap_or_default().contains("need a lead"), "{seen}");
        assert_eq!(list(dev.token.clone()).await["approvals"].as_array().unwrap().len(), 1);
        assert_eq!(list(peer.token.clone()).await["approvals"], json!([]));

        // Hostile decisions: a peer (not an approver) cannot see it; the caller may
        // not approve their own call; a body without a decision is refused.
        let decide = |key: String, body: Value| {
            let (base, approval_id) = (base.clone(), approval_id.clone());
            async move { call(Method::POST, format!("{base}/v1/approvals/{approval_id}"), &key, Some(body)).await }
        };
        let (status, body) = decide(peer.token.clone(), json!({"decision": "approve"})).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
        let (status, body) = decide(dev.token.clone(), json!({"decision": "approve"})).await;
        assert_eq!((status, body["error"]["kind"].as_str()), (StatusCode::FORBIDDEN, Some("forbidden")), "{body}");
        assert!(body["error"]["message"].as_str().unwrap().contains("own call"), "{body}");
        let (status, _) = decide(lead.token.clone(), json!({})).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);

        // The lead approves: the call is made and the code goes on where it stopped.
        let (status, body) = decide(lead.token.clone(), json!({"decision": "approve", "reason": "ok"})).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(body["status"], "approved");
        assert_eq!(body["decided_by"], "lee (team leads)");
        // Twice: refused, whatever the second one says.
        let (status, again) = decide(lead.token.clone(), json!({"decision": "deny"})).await;
        assert_eq!((status, again["error"]["kind"].as_str()), (StatusCode::CONFLICT, Some("conflict")), "{again}");
        let done = ended(&base, &dev.token, &id).await;
        assert_eq!(done["status"], "succeeded", "{done}");
        assert_eq!(done["result"]["result"], json!({"dev": 1, "main": {"base": "main", "n": 2}}), "{done}");
        let lines: Vec<&str> =
            done["result"]["logs"].as_array().unwrap().iter().map(|l| l["message"].as_str().unwrap()).collect();
        assert_eq!(lines, ["start", "end"]);

        // The ledger: each call once, the execution once, under its one id.
        let calls = ledger_rows_within(
            &server.ledger(),
            &format!("SELECT name, outcome FROM calls WHERE execution_id = '{id}' ORDER BY id"),
            2,
        );
        assert_eq!(calls, [[json!("tools.test.echo"), json!("ok")], [json!("tools.test.echo"), json!("ok")]]);
        let executions =
            ledger_rows_within(&server.ledger(), &format!("SELECT outcome FROM executions WHERE id = '{id}'"), 1);
        assert_eq!(executions, [[json!("ok")]]);

        // Denied: the call rejects in the code with the approver's reason.
        let (_, paused) = execute(&base, &dev.token, json!({"code": MERGE})).await;
        let (id, approval_id) =
            (paused["execution_id"].as_str().unwrap(), paused["approvals"][0]["id"].as_str().unwrap());
        let (status, _) = call(
            Method::POST,
            format!("{base}/v1/approvals/{approval_id}"),
            &lead.token,
            Some(json!({"decision": "deny", "reason": "not on a Friday"})),
        )
        .await;
        assert_eq!(status, StatusCode::OK);
        let done = ended(&base, &dev.token, id).await;
        let main = done["result"]["result"]["main"].as_str().unwrap_or_default();
        assert!(
            main.starts_with("tool_denied: ") && main.contains("not on a Friday") && main.contains("lee"),
            "{done}"
        );

        // Expired: nobody decided within the rule's second; denied as expired.
        let code = "try { return await tools.test.whoami({}) } catch (e) { return e.kind + ': ' + e.message }";
        let (status, paused) = execute(&base, &dev.token, json!({"code": code})).await;
        assert_eq!(status, StatusCode::ACCEPTED, "{paused}");
        let id = paused["execution_id"].as_str().unwrap();
        let done = ended(&base, &dev.token, id).await;
        let said = done["result"]["result"].as_str().unwrap_or_default();
        assert!(said.starts_with("tool_denied: ") && said.contains("expired"), "{done}");
        let approval_id = paused["approvals"][0]["id"].as_str().unwrap();
        let (status, late) = call(
            Method::POST,
            format!("{base}/v1/approvals/{approval_id}"),
            &lead.token,
            Some(json!({"decision": "approve"})),
        )
        .await;
        assert_eq!(status, StatusCode::CONFLICT, "approving after expiry: {late}");

        // Python pauses and resumes the same way.
        let python = "r = await tools.test.echo(base='main', n=7)\nr['n']";
        let (status, paused) = execute(&base, &dev.token, json!({"code": python, "language": "python"})).await;
        assert_eq!(status, StatusCode::ACCEPTED, "{paused}");
        let (id, approval_id) =
            (paused["execution_id"].as_str().unwrap(), paused["approvals"][0]["id"].as_str().unwrap());
        let (status, _) = call(
            Method::POST,
            format!("{base}/v1/approvals/{approval_id}"),
            &lead.token,
            Some(json!({"decision": "approve"})),
        )
        .await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(ended(&base, &dev.token, id).await["result"]["result"], 7);
    }

    #[tokio::test]
    async fn a_flood_of_pending_approvals_from_one_user_is_capped() {
        let dev = api_key("flood-key", "fay", "platform", "member");
        let config = format!("[sandbox]\ntest_capability = true\n{}", dev.entry);
        let server = start_server_with(&config, POLICY);
        // One execution asking for 25 approvals at once: over the cap of 20, so not kept.
        let code = "await Promise.all(Array.from({length: 25}, (_, n) => tools.test.echo({base: 'main', n})))";
        let (status, body) = execute(&server.base, &dev.token, json!({"code": code})).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(body["error"]["kind"], "tool_denied", "{body}");
        assert!(body["error"]["message"].as_str().unwrap().contains("already has"), "{body}");
        // Twenty executions pause; the twenty-first does not.
        for n in 0..20 {
            let code = format!("return await tools.test.echo({{base: 'main', n: {n}}})");
            let (status, body) = execute(&server.base, &dev.token, json!({"code": code})).await;
            assert_eq!(status, StatusCode::ACCEPTED, "{n}: {body}");
        }
        let (status, body) = execute(&server.base, &dev.token, json!({"code": MERGE})).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(body["error"]["kind"], "tool_denied", "{body}");
        let (_, listed) = call(Method::GET, format!("{}/v1/approvals", server.base), &dev.token, None).await;
        assert_eq!(listed["approvals"].as_array().unwrap().len(), 20);
    }
}

/// The console's approve button, in headless Chromium: the approver finds the call,
/// approves it, and the execution's page shows it ended, with the decision.
#[tokio::test]
async fn a_lead_approves_in_the_console_and_the_execution_ends() {
    use serde_json::json;
    let org = over_http::Org::start(over_http::POLICY, "");
    let (server, dev, lead) = (&org.server, &org.dev, &org.lead);
    let (id, approval) = org.pause(over_http::MERGE).await;
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/python/approvals_browser.py");
    let output = tokio::task::spawn_blocking({
        let (base, key, caller) = (server.base.clone(), lead.token.clone(), dev.token.clone());
        let (approval, id) = (approval.clone(), id.clone());
        move || {
            std::process::Command::new("python3").args([script, &base, &key, &caller, &approval, &id]).output().unwrap()
        }
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "the browser test failed:\n{stdout}\n{}", String::from_utf8_lossy(&output.stderr));
    let seen: serde_json::Value = serde_json::from_str(stdout.lines().last().unwrap_or("")).expect("the summary");
    assert_eq!(seen["tool"], "tools.test.echo", "{seen}");
    assert_eq!(seen["args"], json!({"base": "main", "n": 2}), "{seen}");
    assert_eq!(seen["status"], "approved", "{seen}");
    assert!(seen["decided"].as_str().unwrap().contains("lee (team leads)"), "{seen}");
    assert!(seen["decided"].as_str().unwrap().contains("looks right"), "{seen}");
    assert!(seen["approver_sees"].as_str().unwrap().starts_with("resumed"), "{seen}");
    assert_eq!(seen["outcome"], "ok", "{seen}");
    assert_eq!(seen["execution_approvals"][0][2], "approved", "{seen}");
    assert!(seen["timeline"].as_array().unwrap().iter().any(|l| l == "approval tools.test.echo"), "{seen}");
    let done = over_http::ended(&server.base, &dev.token, &id).await;
    assert_eq!(done["result"]["result"]["main"], json!({"base": "main", "n": 2}), "{done}");
}

/// The official Python `mcp` SDK as the client, on both protocol revisions: on
/// 2025-11-25 a paused `execute` says where to approve and `resume` waits for the
/// result; on 2026-07-28 it is an `InputRequiredResult` with a URL elicitation of the
/// console's approval page, and the retry with its request state gives the result.
#[tokio::test]
async fn mcp_clients_on_both_revisions_learn_where_to_approve_and_get_the_result() {
    use serde_json::json;
    let org = over_http::Org::start(over_http::POLICY, "");
    let (server, dev, lead) = (&org.server, &org.dev, &org.lead);
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/python/mcp_approvals.py");
    for mode in ["legacy", "modern"] {
        let output = tokio::task::spawn_blocking({
            let (base, dev, lead) = (server.base.clone(), dev.token.clone(), lead.token.clone());
            move || {
                std::process::Command::new("python3")
                    .args([script, mode, &format!("{base}/mcp"), &base, &dev, &lead, over_http::MERGE])
                    .output()
                    .unwrap()
            }
        })
        .await
        .unwrap();
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert!(output.status.success(), "{mode}:\n{stdout}\n{}", String::from_utf8_lossy(&output.stderr));
        let seen: serde_json::Value = serde_json::from_str(stdout.lines().last().unwrap_or("")).expect("the summary");
        assert_eq!(seen["decided"], "approved", "{mode}: {seen}");
        assert_eq!(seen["final_error"], false, "{mode}: {seen}");
        assert_eq!(seen["final_structured"]["result"]["main"], json!({"base": "main", "n": 2}), "{mode}: {seen}");
        if mode == "modern" {
            assert_eq!(seen["protocol"], "2026-07-28", "{seen}");
            assert_eq!(seen["first_type"], "InputRequiredResult", "{seen}");
            let requests = seen["requests"].as_object().unwrap();
            assert_eq!(requests.len(), 1, "{seen}");
            let (key, request) = requests.iter().next().unwrap();
            assert_eq!(request["mode"], "url", "{seen}");
            assert_eq!(request["url"], format!("{}/ui/approvals/{key}", server.base), "{seen}");
        } else {
            assert_eq!(seen["protocol"], "2025-11-25", "{seen}");
            assert_eq!(seen["first_error"], false, "{seen}");
            let text = seen["first_text"][0].as_str().unwrap();
            assert!(text.starts_with("paused: approve at http://") && text.contains("/ui/approvals/apr_"), "{text}");
            assert!(text.contains("then call `execute` with `resume: \""), "{text}");
        }
    }
}

/// An MCP client with the tasks extension: a paused `execute` is a task in
/// `input_required`, whose payload carries the console's approval page; once a lead
/// approves, `tasks/get` gives the completed result.
#[tokio::test]
async fn a_paused_execution_is_a_task_in_input_required() {
    use rmcp::model::{
        CallToolRequestParams, CallToolResponse, ClientCapabilities, ClientConfig, GetTaskParams, Implementation,
        InputRequest, TaskPayload, TaskStatus,
    };
    use rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig;
    use rmcp::transport::StreamableHttpClientTransport;
    use rmcp::ServiceExt;
    use serde_json::json;
    let org = over_http::Org::start(over_http::POLICY, "");
    let (server, dev, _lead) = (&org.server, &org.dev, &org.lead);
    let transport = StreamableHttpClientTransport::from_config(
        StreamableHttpClientTransportConfig::with_uri(format!("{}/mcp", server.base)).auth_header(dev.token.clone()),
    );
    let info =
        ClientConfig::new(ClientCapabilities::builder().enable_tasks().build(), Implementation::new("test", "1"));
    let client = info.serve(transport).await.expect("the client connects");
    let arguments = json!({"code": over_http::MERGE, "language": "javascript"}).as_object().cloned().unwrap();
    let answer = client.call_tool_once(CallToolRequestParams::new("execute").with_arguments(arguments)).await.unwrap();
    let CallToolResponse::Task(task) = answer else { panic!("a paused run is a task: {answer:?}") };
    let id = task.task.task_id.clone();
    let got = client.get_task(GetTaskParams::new(id.clone())).await.unwrap();
    assert_eq!(got.task.status(), TaskStatus::InputRequired, "{got:?}");
    let TaskPayload::InputRequired { input_requests } = got.task.payload else { panic!("{got:?}") };
    let (approval, request) = input_requests.iter().next().expect("one approval");
    let InputRequest::Elicitation(elicit) = request else { panic!("{request:?}") };
    let shown = serde_json::to_value(&elicit.params).unwrap();
    assert_eq!(shown["mode"], "url", "{shown}");
    assert_eq!(shown["url"], format!("{}/ui/approvals/{approval}", server.base), "{shown}");
    assert_eq!(org.decide(approval, "approve").await.0, reqwest::StatusCode::OK);
    let done = loop {
        let got = client.get_task(GetTaskParams::new(id.clone())).await.unwrap();
        if got.task.status() != TaskStatus::InputRequired && got.task.status() != TaskStatus::Working {
            break got;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    };
    let TaskPayload::Completed { result } = done.task.payload else { panic!("{done:?}") };
    assert_eq!(result["structuredContent"]["result"]["main"], json!({"base": "main", "n": 2}), "{result:?}");
    client.cancel().await.unwrap();
}

/// `sandgate approvals` against a running server, with an API key: list what waits,
/// approve it with a reason, count decisions per tool and approver.
#[tokio::test]
async fn an_approver_decides_on_the_command_line() {
    use crate::harness::*;
    use reqwest::{Method, StatusCode};

    let org = over_http::Org::start(over_http::POLICY, "");
    let (server, dev, lead) = (&org.server, &org.dev, &org.lead);
    let (id, approval) = org.pause(over_http::MERGE).await;
    let cli = |args: Vec<String>| {
        let (base, key) = (server.base.clone(), lead.token.clone());
        tokio::task::spawn_blocking(move || {
            let output = crate::binary::sandgate()
                .args(&args)
                .args(["--server", &base])
                .env("SANDGATE_API_KEY", key)
                .output()
                .unwrap();
            (
                output.status.code(),
                String::from_utf8_lossy(&output.stdout).into_owned(),
                String::from_utf8_lossy(&output.stderr).into_owned(),
            )
        })
    };
    let args = |list: &[&str]| list.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    let (code, stdout, stderr) = cli(args(&["approvals", "list"])).await.unwrap();
    assert_eq!(code, Some(0), "{stderr}");
    let line = stdout.lines().find(|l| l.starts_with(&approval)).unwrap_or_else(|| panic!("{stdout}"));
    assert!(line.contains("pending") && line.contains("tools.test.echo") && line.contains("dana (platform)"), "{line}");
    let (code, _, stderr) = cli(args(&["approvals", "approve", &approval, "--reason", "ship it"])).await.unwrap();
    assert_eq!(code, Some(0), "{stderr}");
    assert!(stderr.starts_with("approved tools.test.echo"), "{stderr}");
    let (code, _, stderr) = cli(args(&["approvals", "deny", &approval])).await.unwrap();
    assert_eq!(code, Some(2), "deciding twice: {stderr}");
    assert!(stderr.contains("409") && stderr.contains("approved already"), "{stderr}");
    let done = over_http::ended(&server.base, &dev.token, &id).await;
    assert_eq!(done["status"], "succeeded", "{done}");
    let (code, stdout, stderr) = cli(args(&["approvals", "counts"])).await.unwrap();
    assert_eq!(code, Some(0), "{stderr}");
    let row = stdout.lines().find(|l| l.starts_with("tools.test.echo")).unwrap_or_else(|| panic!("{stdout}"));
    let fields: Vec<&str> = row.split_whitespace().collect();
    assert_eq!(&fields[1..6], ["lee", "(team", "leads)", "1", "0"], "{row}");

    // The usage report counts them too: over HTTP for the approver, and `sandgate usage`.
    let (status, report) = call(Method::GET, format!("{}/v1/usage", server.base), &lead.token, None).await;
    assert_eq!(status, StatusCode::OK, "{report}");
    assert_eq!(report["approvals"][0]["tool"], "tools.test.echo", "{report}");
    assert_eq!(report["approvals"][0]["approver"], "lee (team leads)", "{report}");
    assert_eq!(report["approvals"][0]["approved"], 1, "{report}");
    let config = server.dir.join("sandgate.toml");
    let output = tokio::task::spawn_blocking(move || {
        crate::binary::sandgate()
            .args(["usage", "--config"])
            .arg(&config)
            .env_remove("SANDGATE_LEDGER")
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{stdout}{}", String::from_utf8_lossy(&output.stderr));
    let row = stdout.lines().skip_while(|l| !l.starts_with("APPROVALS: TOOL")).nth(1).unwrap_or_default();
    assert!(row.starts_with("tools.test.echo") && row.contains("lee (team leads)"), "{stdout}");
}

/// A background execution that pauses: its status reads `paused`, and its events
/// stream gives a `paused` event with the approvals, then, once approved, the result.
#[tokio::test]
async fn a_background_execution_shows_paused_in_its_status_and_events() {
    use crate::harness::*;
    use futures::StreamExt;
    use reqwest::{Method, StatusCode};
    use serde_json::json;
    let org = over_http::Org::start(over_http::POLICY, "");
    let (server, dev, lead) = (&org.server, &org.dev, &org.lead);
    let (status, started) = call(
        Method::POST,
        format!("{}/v1/executions", server.base),
        &dev.token,
        Some(json!({"code": over_http::MERGE})),
    )
    .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{started}");
    let id = started["execution_id"].as_str().unwrap().to_string();
    let response = client()
        .get(format!("{}/v1/executions/{id}/events", server.base))
        .bearer_auth(&dev.token)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let mut stream = response.bytes_stream();
    let mut text = String::new();
    let mut approved = false;
    while let Some(chunk) = tokio::time::timeout(std::time::Duration::from_secs(20), stream.next()).await.unwrap() {
        text.push_str(&String::from_utf8_lossy(&chunk.unwrap()));
        if !approved && text.contains("event: paused") {
            let (_, view) = call(Method::GET, format!("{}/v1/executions/{id}", server.base), &dev.token, None).await;
            assert_eq!(view["status"], "paused", "{view}");
            let approval = view["result"]["approvals"][0]["id"].as_str().unwrap().to_string();
            let (status, _) = call(
                Method::POST,
                format!("{}/v1/approvals/{approval}", server.base),
                &lead.token,
                Some(json!({"decision": "approve"})),
            )
            .await;
            assert_eq!(status, StatusCode::OK);
            approved = true;
        }
        if text.contains("event: result") {
            break;
        }
    }
    assert!(approved, "{text}");
    let result = text.split("event: result\ndata: ").nth(1).unwrap_or_default().lines().next().unwrap_or_default();
    let result: serde_json::Value = serde_json::from_str(result).unwrap_or_else(|e| panic!("{e}: {text}"));
    assert_eq!(result["result"]["main"], json!({"base": "main", "n": 2}), "{text}");
    let paused_at = text.find("event: paused").unwrap();
    assert!(text[..paused_at].contains("start"), "the line before the pause came live: {text}");
}

/// Its caller cancels a paused execution: it ends `cancelled`, recorded, its approval
/// is no longer pending, and a late approval changes nothing.
#[tokio::test]
async fn a_paused_execution_can_be_cancelled_by_its_caller() {
    use crate::harness::*;
    use reqwest::{Method, StatusCode};
    use serde_json::json;
    let org = over_http::Org::start(over_http::POLICY, "");
    let (server, dev, lead) = (&org.server, &org.dev, &org.lead);
    let (id, approval) = org.pause(over_http::MERGE).await;
    let (status, view) = call(Method::DELETE, format!("{}/v1/executions/{id}", server.base), &dev.token, None).await;
    assert_eq!((status, view["status"].as_str()), (StatusCode::OK, Some("cancelled")), "{view}");
    assert_eq!(view["result"]["error"]["kind"], "cancelled", "{view}");
    let (_, shown) = call(Method::GET, format!("{}/v1/approvals/{approval}", server.base), &lead.token, None).await;
    assert_eq!(shown["status"], "denied", "{shown}");
    let (status, _) = call(
        Method::POST,
        format!("{}/v1/approvals/{approval}", server.base),
        &lead.token,
        Some(json!({"decision": "approve"})),
    )
    .await;
    assert_eq!(status, StatusCode::CONFLICT);
    let rows = ledger_rows_within(&server.ledger(), &format!("SELECT outcome FROM executions WHERE id = '{id}'"), 1);
    assert_eq!(rows, [[json!("cancelled")]]);
}

/// A `model.chat` a rule sends for approval pauses and, approved, reaches the
/// provider once; a call that needs approval inside a session is refused, saying
/// sessions cannot pause yet.
#[tokio::test]
async fn a_model_call_waits_for_approval_and_a_session_refuses_to_pause() {
    use crate::harness::*;
    use reqwest::{Method, StatusCode};
    use serde_json::json;
    let stub = crate::stub::Stub::start();
    std::env::set_var("SANDGATE_PAUSES_PROVIDER_KEY", "sk-stub");
    let models = stub.openai_config("SANDGATE_PAUSES_PROVIDER_KEY", &[("cheap", "gpt-cheap-ok", "economy")]);
    // POLICY's one policy, with models, sessions and a rule for long model requests.
    let policy = format!(
        "{}[policy.models]\ntiers = [\"economy\"]\n[policy.sessions]\n[[policy.rules]]\nmodels = [\"cheap\"]\nwhen = \"size(args.messages) > 1\"\ndecision = \"approve\"\napprovers = [\"team:leads\"]\n",
        over_http::POLICY
    );
    let org = over_http::Org::start(&policy, &models);
    let (server, dev) = (&org.server, &org.dev);
    let code = "const a = await model.chat({model: 'cheap', messages: [{role: 'user', content: 'one'}]});\n\
                const b = await model.chat({model: 'cheap', messages: [{role: 'user', content: 'one'}, {role: 'user', content: 'two'}]});\n\
                return [a.model, b.model]";
    let (id, approval) = org.pause(code).await;
    let (_, shown) = call(Method::GET, format!("{}/v1/approvals/{approval}", server.base), &dev.token, None).await;
    assert_eq!(shown["tool"], "model.chat", "{shown}");
    assert_eq!(stub.requests().len(), 1, "only the first call reached the provider");
    assert_eq!(org.decide(&approval, "approve").await.0, StatusCode::OK);
    let done = org.ended(&id).await;
    assert_eq!(done["result"]["result"], json!(["cheap", "cheap"]), "{done}");
    assert_eq!(stub.requests().len(), 2, "the approved call was made once");

    // In a session, a call that needs approval is refused: sessions cannot pause yet.
    let (status, session) =
        call(Method::POST, format!("{}/v1/sessions", server.base), &dev.token, Some(json!({"language": "javascript"})))
            .await;
    assert_eq!(status, StatusCode::CREATED, "{session}");
    let code = "try { await tools.test.echo({base: 'main'}) } catch (e) { e.kind + ': ' + e.message }";
    let (status, body) = call(
        Method::POST,
        format!("{}/v1/execute", server.base),
        &dev.token,
        Some(json!({"code": code, "session_id": session["session_id"]})),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let said = body["result"].as_str().unwrap_or_default();
    assert!(said.starts_with("tool_denied: ") && said.contains("in a session cannot pause"), "{body}");
}

/// `sandgate exec` whose code pauses prints the paused body and exits 3.
#[test]
fn exec_on_the_command_line_reports_a_pause() {
    use std::io::Write;
    let dir = crate::harness::temp_dir("exec-pause");
    std::fs::create_dir_all(dir.join("policies")).unwrap();
    std::fs::write(dir.join("policies/rules.toml"), over_http::POLICY).unwrap();
    let config = dir.join("sandgate.toml");
    std::fs::write(
        &config,
        "policies = \"policies\"\n[sandbox]\ntest_capability = true\n[ledger]\npath = \"ledger.db\"\n",
    )
    .unwrap();
    let mut child = crate::binary::sandgate()
        .args(["exec", "-", "--config"])
        .arg(&config)
        .env_remove("SANDGATE_LEDGER")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(over_http::MERGE.as_bytes()).unwrap();
    let output = child.wait_with_output().unwrap();
    let body: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap_or_default();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(3), "{body}\n{stderr}");
    assert_eq!(body["status"], "paused", "{body}");
    assert!(body["approvals"][0]["id"].as_str().unwrap_or_default().starts_with("apr_"), "{body}");
    assert!(stderr.contains("paused at a call that needs approval"), "{stderr}");
}

/// An execution with a writable mount pauses: what it wrote before the pause is there,
/// and after the approval it reads and writes the mount again.
#[tokio::test]
async fn an_execution_with_a_mount_pauses_and_has_it_again_when_it_resumes() {
    use crate::harness::*;

    use serde_json::json;
    let out = temp_dir("pause-mount");
    std::fs::create_dir_all(&out).unwrap();
    let out = out.canonicalize().unwrap();
    let policy = over_http::POLICY.replacen(
        "[policy.tools]",
        &format!(
            "[policy.files]\nmounts = [{{ path = \"{}\", as = \"out\", mode = \"rw\" }}]\n[policy.tools]",
            out.display()
        ),
        1,
    );
    let org = over_http::Org::start(&policy, "");
    let code = "await fs.writeFile('out/before.txt', 'one');\n\
                const merged = await tools.test.echo({base: 'main', n: 1});\n\
                const before = await fs.readFile('out/before.txt', 'utf8');\n\
                await fs.writeFile('out/after.txt', before + ' two');\n\
                return [merged.n, before]";
    let (id, approval) = org.pause(code).await;
    assert_eq!(std::fs::read_to_string(out.join("before.txt")).unwrap(), "one", "written at once");
    assert_eq!(org.decide(&approval, "approve").await.0, reqwest::StatusCode::OK);
    let done = org.ended(&id).await;
    assert_eq!(done["result"]["result"], json!([1, "one"]), "{done}");
    assert_eq!(std::fs::read_to_string(out.join("after.txt")).unwrap(), "one two");
}

/// A door's call limit counts across a pause: the calls made before it and the
/// approved one count, so the code cannot pass `limits.tool_calls` by pausing.
#[tokio::test]
async fn call_limits_count_across_a_pause() {
    let policy = over_http::POLICY.replacen("wall_ms = 20_000", "wall_ms = 20_000\ntool_calls = 3", 1);
    let org = over_http::Org::start(&policy, "");
    let code = "await tools.test.echo({n: 1}); await tools.test.echo({n: 2});\n\
                await tools.test.echo({base: 'main', n: 3});\n\
                await tools.test.echo({n: 4});\n\
                return 'four calls'";
    let (id, approval) = org.pause(code).await;
    assert_eq!(org.decide(&approval, "approve").await.0, reqwest::StatusCode::OK);
    let done = org.ended(&id).await;
    assert_eq!(done["status"], "failed", "{done}");
    assert_eq!(done["result"]["error"]["kind"], "call_limit", "{done}");
}
