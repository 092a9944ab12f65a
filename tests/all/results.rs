//! What code returns, logs and throws.

use serde_json::json;

use crate::harness::*;

#[tokio::test]
async fn arithmetic_objects_and_expressions() {
    assert_eq!(result_of("return 1 + 2 * 3").await, json!(7));
    assert_eq!(
        result_of("return {a: [1, 2, {b: null}], s: 'x', t: true}").await,
        json!({"a": [1, 2, {"b": null}], "s": "x", "t": true})
    );
    assert_eq!(result_of("1 + 1").await, json!(2), "a lone expression gives its value");
    assert_eq!(result_of("'ünïcødé ✓'").await, json!("ünïcødé ✓"));
}

#[tokio::test]
async fn top_level_await_and_function_forms() {
    assert_eq!(result_of("const v = await Promise.resolve(5);\nreturn v * 2").await, json!(10));
    assert_eq!(result_of("async () => { await null; return 3 }").await, json!(3));
    assert_eq!(result_of("function () { return 4 }").await, json!(4));
    assert_eq!(result_of("() => Promise.resolve('p')").await, json!("p"));
}

#[tokio::test]
async fn undefined_becomes_null() {
    assert_eq!(result_of("return undefined").await, json!(null));
    assert_eq!(result_of("let x = 1;").await, json!(null));
    assert_eq!(result_of("return [undefined, 1]").await, json!([null, 1]));
}

#[tokio::test]
async fn console_lines_are_kept_in_order_with_levels() {
    let body = run(json!({ "code": "console.log('a', 1, {b: 2}); console.info('i'); console.warn('w'); console.error(new Error('e')); console.log([1n]); return 0" })).await;
    let logs = body["logs"].as_array().unwrap();
    let levels: Vec<&str> = logs.iter().map(|l| l["level"].as_str().unwrap()).collect();
    assert_eq!(levels, ["log", "info", "warn", "error", "log"]);
    assert_eq!(logs[0]["message"], "a 1 {\"b\":2}");
    assert!(logs[3]["message"].as_str().unwrap().starts_with("Error: e"), "{body}");
    assert_eq!(logs[4]["message"], "[\"1n\"]");
}

#[tokio::test]
async fn syntax_errors_point_at_line_and_column() {
    let error = error_of("let x = 1;\nlet y = ;\nreturn x", json!({})).await;
    assert_eq!(error["kind"], "syntax", "{error}");
    assert_eq!(error["line"], 2, "{error}");
    assert!(error["column"].as_u64().unwrap() >= 8, "{error}");

    let error = error_of("return )", json!({})).await;
    assert_eq!(error["kind"], "syntax", "{error}");
    assert_eq!(error["line"], 1, "{error}");
    assert_eq!(error["column"], 8, "column is relative to the submitted code: {error}");
}

#[tokio::test]
async fn thrown_errors_carry_message_position_and_stack() {
    let error = error_of("function inner() {\n  throw new TypeError('boom');\n}\ninner();", json!({})).await;
    assert_eq!(error["kind"], "exception", "{error}");
    assert_eq!(error["message"], "boom");
    assert_eq!(error["name"], "TypeError");
    assert_eq!(error["line"], 2, "{error}");
    assert!(error["stack"].as_str().unwrap().contains("inner"), "{error}");

    let error = error_of("await Promise.reject(new Error('later'))", json!({})).await;
    assert_eq!(error["kind"], "exception");
    assert_eq!(error["message"], "later");

    let error = error_of("throw 'a string'", json!({})).await;
    assert_eq!(error["kind"], "exception");
    assert!(error["message"].as_str().unwrap().contains("a string"), "{error}");

    let error = error_of("const e = new Error('x'); e.kind = 'out_of_memory'; throw e", json!({})).await;
    assert_eq!(error["kind"], "exception", "the guest cannot claim a host-enforced kind: {error}");
}

#[tokio::test]
async fn input_is_a_global() {
    let body =
        run(json!({ "code": "return {sum: input.a + input.b.length, same: input}", "input": {"a": 1, "b": [1, 2]} }))
            .await;
    assert_eq!(body["result"], json!({"sum": 3, "same": {"a": 1, "b": [1, 2]}}));
    assert_eq!(result_of("return input").await, json!(null));
}

#[tokio::test]
async fn results_that_are_not_json_are_clear_errors() {
    let error = error_of("return 10n", json!({})).await;
    assert_eq!(error["kind"], "exception");
    assert!(error["message"].as_str().unwrap().contains("not JSON-serialisable"), "{error}");
    let error = error_of("const a = {}; a.self = a; return a", json!({})).await;
    assert!(error["message"].as_str().unwrap().contains("not JSON-serialisable"), "{error}");
}

#[tokio::test]
async fn usage_is_reported() {
    let body = run(json!({ "code": "let s = 0; for (let i = 0; i < 100000; i++) s += i; return s" })).await;
    assert_eq!(body["result"], json!(4999950000u64));
    let usage = &body["usage"];
    assert!(usage["fuel"].as_u64().unwrap() > 1_000_000, "{usage}");
    assert!(usage["memory_bytes"].as_u64().unwrap() > 0, "{usage}");
    assert_eq!(usage["host_calls"], 0);
    assert!(body["execution_id"].as_str().unwrap().len() >= 32);
}
