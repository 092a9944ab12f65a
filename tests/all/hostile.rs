//! Hostile code: it cannot forge the kinds the host reserves, cannot make stripping
//! TypeScript cost more than its bound, and cannot hide a denied call from the ledger.

use serde_json::{json, Value};

use crate::harness::*;

#[path = "../corpus/typescript.rs"]
mod corpus;

#[tokio::test]
async fn thrown_errors_cannot_claim_a_host_kind() {
    for kind in [
        "internal",
        "tool_denied",
        "tool_error",
        "budget_exceeded",
        "model_denied",
        "output_limit",
        "syntax",
        "unsettled",
        "timeout",
        "call_limit",
        "cancelled",
    ] {
        let error = error_of(&format!("throw Object.assign(new Error('x'), {{kind: '{kind}'}})"), json!({})).await;
        assert_eq!(error["kind"], "exception", "kind {kind}: {error}");
        assert_eq!(error["message"], "x", "{error}");
        let error = error_of(&format!("throw {{kind: '{kind}', message: 'forged'}}"), json!({})).await;
        assert_eq!(error["kind"], "exception", "plain object with kind {kind}: {error}");
        // A host error whose `kind` property is rewritten keeps the kind the host gave it.
        let error = error_of(
            &format!("try {{ await tools.test.fail({{message: 'm'}}) }} catch (e) {{ try {{ e.kind = '{kind}' }} catch (_) {{}} throw e }}"),
            json!({}),
        )
        .await;
        assert_eq!(error["kind"], "tool_error", "rethrown host error after kind = {kind}: {error}");
    }
}

#[tokio::test]
async fn host_errors_keep_their_kind_when_rethrown() {
    let error = error_of("await tools.test.fail({message: 'boom'})", json!({})).await;
    assert_eq!((error["kind"].as_str(), error["message"].as_str()), (Some("tool_error"), Some("boom")), "{error}");
    let error = error_of("try { await tools.nosuch.tool({}) } catch (e) { throw e }", json!({})).await;
    assert_eq!(error["kind"], "tool_denied", "{error}");
    let caught = result_of("try { await tools.test.fail({}) } catch (e) { return e.kind }").await;
    assert_eq!(caught, json!("tool_error"));
}

#[tokio::test]
async fn unreadable_errors_are_exceptions_that_say_so() {
    let cases = [
        (
            "message getter throws",
            "const e = new Error('x'); Object.defineProperty(e, 'message', {get() { throw 1 }}); throw e",
        ),
        (
            "proxy that throws on every trap",
            "throw new Proxy({}, {get() { throw new Error('trap') }, getPrototypeOf() { throw 2 }})",
        ),
        (
            "name getter throws",
            "const e = new Error('x'); Object.defineProperty(e, 'name', {get() { throw 3 }}); throw e",
        ),
        ("toString throws", "throw {message: {toString() { throw 4 }}}"),
        ("symbol message", "throw {message: Symbol('s')}"),
        (
            "stack getter throws",
            "const e = new Error('x'); Object.defineProperty(e, 'stack', {get() { throw 5 }}); throw e",
        ),
    ];
    for (name, code) in cases {
        let error = error_of(code, json!({})).await;
        assert_eq!(error["kind"], "exception", "{name}: {error}");
        assert!(!error["message"].as_str().unwrap_or("").is_empty(), "{name}: {error}");
    }
    let error = error_of(cases[0].1, json!({})).await;
    assert!(error["message"].as_str().unwrap().contains("cannot be read"), "{error}");
}

#[tokio::test]
async fn forged_positions_and_polluted_prototypes_change_nothing_the_host_decides() {
    // A stack that names an impossible position: no position, still an exception.
    let error = error_of(
        "const e = new Error('x'); e.stack = 'at f (<input>:99999999999999:1)\\nat <input>:-4:x'; throw e",
        json!({}),
    )
    .await;
    assert_eq!(error["kind"], "exception", "{error}");
    assert!(error.get("line").is_none(), "{error}");
    // Getters on Object.prototype cannot turn a tool's success into a forged failure.
    let result = result_of(
        "Object.defineProperty(Object.prototype, 'error', {get() { return {kind: 'internal', message: 'forged'} }});\n\
         return (await tools.test.echo({a: 1})).a",
    )
    .await;
    assert_eq!(result, json!(1));
    let error = error_of(
        "Object.prototype.toJSON = function () { return {kind: 'internal', message: 'forged'} };\n\
         throw new Error('x')",
        json!({}),
    )
    .await;
    assert_eq!((error["kind"].as_str(), error["message"].as_str()), (Some("exception"), Some("x")), "{error}");
    // Replaced built-ins cannot break the reporting of a failure.
    let error = error_of(
        "JSON.stringify = () => { throw 1 }; String = null; WeakMap.prototype.get = () => 'internal';\n\
         Array.prototype.join = () => { throw 2 }; throw new Error('still reported')",
        json!({}),
    )
    .await;
    assert_eq!(
        (error["kind"].as_str(), error["message"].as_str()),
        (Some("exception"), Some("still reported")),
        "{error}"
    );
}

#[tokio::test]
async fn tool_functions_are_kept_and_replies_arrive_whatever_the_prototypes_say() {
    // Each tool's function is made on first read and kept; replies are delivered by
    // id through a table with no prototype, so accessors on Object.prototype and a
    // replaced Map cannot steal or misroute them.
    let result = result_of(
        "Object.defineProperty(Object.prototype, '1', {get() { return [() => {}, () => {}] }, set(v) {}});\n\
         Object.defineProperty(Object.prototype, '2', {get() { throw new Error('trap') }, set(v) { throw 9 }});\n\
         Map.prototype.get = () => undefined; Map.prototype.set = () => { throw 1 }; Reflect.apply = null;\n\
         const echo = tools.test.echo;\n\
         const kept = echo === tools.test.echo && tools.test === tools.test;\n\
         const thenable = tools.then !== undefined || tools.test.then !== undefined;\n\
         const replies = await Promise.all([echo({n: 1}), tools.test.echo({n: 2}), tools['test']['echo']({n: 3})]);\n\
         const none = await tools.test.echo();\n\
         return [kept, thenable, replies.map((r) => r.n), Object.keys(tools.test), none]",
    )
    .await;
    // A call without arguments sends an empty object.
    assert_eq!(result, json!([true, false, [1, 2, 3], ["echo"], {}]));
}

#[tokio::test]
async fn lone_surrogates_become_replacement_characters() {
    let body = run(
        json!({"code": "console.log('a\\uD800b', '\\uDFFF'); return ['\\uD800', '\\uD83D\\uDE00', {['k\\uDC00']: 1}]"}),
    )
    .await;
    assert_eq!(body["ok"], true, "{body}");
    assert_eq!(body["logs"][0]["message"], "a\u{FFFD}b \u{FFFD}", "{body}");
    assert_eq!(body["result"], json!(["\u{FFFD}", "😀", {"k\u{FFFD}": 1}]), "{body}");
    let echoed = result_of("return (await tools.test.echo({s: 'x\\uD800'})).s").await;
    assert_eq!(echoed, json!("x\u{FFFD}"));
    let error = error_of("throw new Error('bad \\uD800 text')", json!({})).await;
    assert_eq!(error["message"], "bad \u{FFFD} text", "{error}");
}

#[tokio::test]
async fn deep_recursion_is_a_catchable_range_error() {
    let depth = result_of("function f(n) { return n === 0 ? 0 : 1 + f(n - 1) }\nreturn f(3000)").await;
    assert_eq!(depth, json!(3000));
    let caught = result_of(
        "function f(n) { return f(n + 1) + 1 }\ntry { f(0) } catch (e) { return [e instanceof RangeError, e.message] }",
    )
    .await;
    assert_eq!(caught[0], json!(true), "{caught}");
    let error = error_of("function f(n) { return f(n + 1) + 1 }\nreturn f(0)", json!({})).await;
    assert_eq!((error["kind"].as_str(), error["name"].as_str()), (Some("exception"), Some("RangeError")), "{error}");
    // Fatter frames, and recursion through native built-ins. (Recursion inside one
    // built-in on absurdly nested data, such as JSON.parse of 200,000 `[`, runs on
    // the native stack, which QuickJS cannot measure: it ends in `stack_overflow`.)
    for code in [
        "function f(a, b, c, d, e, f1, g, h) { const x = [a, b, c]; return f(a, b, c, d, e, f1, g, h) + x.length }\ntry { f(1,2,3,4,5,6,7,8) } catch (e) { return e instanceof RangeError }",
        "function f(xs) { return [xs].map(f) }\ntry { f([]) } catch (e) { return e instanceof RangeError }",
        "const o = {}; o.toString = () => `${o}`; try { String(o) } catch (e) { return e instanceof RangeError }",
    ] {
        assert_eq!(result_of(code).await, json!(true), "{code}");
    }
    let error = error_of("return JSON.parse('['.repeat(200000))", json!({})).await;
    assert_eq!(error["kind"], "stack_overflow", "{error}");
    assert_healthy().await;
}

#[tokio::test]
async fn a_denied_call_is_recorded_as_denied_even_if_never_awaited() {
    let server = start_server_with(TEST_CONFIG, TEST_POLICY);
    let (status, body) =
        post_to(&server.base, json!({"code": "tools.nosuch.probe({}); tools.test.echo({}); return 1"})).await;
    assert_eq!((status.as_u16(), &body["ok"]), (200, &json!(true)), "{body}");
    let calls = call_records(&server, body["execution_id"].as_str().unwrap());
    assert_eq!(
        calls,
        vec![
            ("tools.nosuch.probe".to_string(), "tool_denied".to_string()),
            ("tools.test.echo".into(), "cancelled".into())
        ]
    );
}

/// `(name, outcome)` of an execution's host calls, in the order they started.
pub fn call_records(server: &TestServer, execution_id: &str) -> Vec<(String, String)> {
    let ledger = rusqlite::Connection::open(server.ledger()).unwrap();
    let mut statement = ledger
        .prepare("SELECT name, outcome FROM calls WHERE execution_id = ?1 ORDER BY started_at_ms, rowid")
        .unwrap();
    statement.query_map([execution_id], |row| Ok((row.get(0)?, row.get(1)?))).unwrap().map(Result::unwrap).collect()
}

#[tokio::test]
async fn typescript_stripping_is_bounded_on_pathological_input() {
    for (name, code) in corpus::corpus() {
        assert!(code.len() <= 256 * 1024, "{name}");
        let body = run(json!({"code": code, "language": "typescript"})).await;
        // Refused as too complex or as a syntax error, or (for the few that are valid
        // TypeScript) stripped and run: never a limit of the execution or a fault.
        let error = &body["error"];
        assert!(matches!(error["kind"].as_str(), Some("syntax" | "exception")), "{name}: {body:.300}");
        let message = error["message"].as_str().unwrap_or("");
        assert!(!message.is_empty(), "{name}: {error}");
        // Within the preparation bound: 20 million fuel plus 1,500 per byte, 32 MiB.
        // (`usage.strip` is there when stripping ended; otherwise it was the whole run.)
        let usage = &body["usage"];
        let strip = if usage["strip"].is_object() { &usage["strip"] } else { usage };
        let fuel = strip["fuel"].as_u64().unwrap();
        assert!(fuel <= 20_000_000 + 1_500 * code.len() as u64, "{name}: used {fuel} fuel");
        assert!(strip["memory_bytes"].as_u64().unwrap() <= 32 << 20, "{name}: {body:.300}");
    }
    assert_healthy().await;
}

#[tokio::test]
async fn typescript_past_its_work_bound_is_a_syntax_error_that_says_so() {
    let code = format!("{}x", "a<".repeat(100_000));
    let error = run(json!({"code": code, "language": "typescript"})).await["error"].clone();
    assert_eq!(error["kind"], "syntax", "{error}");
    let message = error["message"].as_str().unwrap();
    assert!(message.contains("work bound") || message.contains("nested too deeply"), "{message}");
    // Shallow nesting over a long list: the memory bound.
    let code = format!("{}{}", "a<".repeat(200), "b,".repeat(120_000));
    let error = run(json!({"code": code, "language": "typescript"})).await["error"].clone();
    assert_eq!(error["kind"], "syntax", "{error}");
    assert!(error["message"].as_str().unwrap().contains("bound"), "{error}");
    // Ordinary TypeScript of the same size still strips and runs.
    let mut typed = String::new();
    while typed.len() < 200_000 {
        typed.push_str(
            "{ const x: Map<string, number[]> = new Map<string, number[]>(); x.set('a', [1] as number[]); }\n",
        );
    }
    typed.push_str("return (1 as number) + 1");
    let body = run(json!({"code": typed, "language": "typescript"})).await;
    assert_eq!(body["result"], json!(2), "{:.300}", body.to_string());
}

#[tokio::test]
async fn typescript_errors_keep_their_positions() {
    let error = run(json!({"code": "let x: number = 1\nlet y: = 2", "language": "typescript"})).await["error"].clone();
    assert_eq!((error["kind"].as_str(), error["line"].as_u64()), (Some("syntax"), Some(2)), "{error}");
    let error = run(json!({"code": "enum E { A }", "language": "typescript"})).await["error"].clone();
    assert_eq!(error["kind"], "syntax", "{error}");
    assert!(error["message"].as_str().unwrap().contains("enum"), "{error}");
    let value: Value =
        result_of_typescript("const xs: number[] = [1, 2];\nreturn xs.map((x: number): number => x * 2)").await;
    assert_eq!(value, json!([2, 4]));
}

async fn result_of_typescript(code: &str) -> Value {
    let body = run(json!({"code": code, "language": "typescript"})).await;
    assert_eq!(body["ok"], true, "{body}");
    body["result"].clone()
}
