//! Every limit ends the run with its own kind, and the server stays healthy.

use serde_json::json;

use crate::harness::*;

#[tokio::test]
async fn an_endless_loop_runs_out_of_fuel() {
    let error = error_of("while (true) {}", json!({"fuel": 1_000_000_000u64})).await;
    assert_eq!(error["kind"], "out_of_fuel", "{error}");
    assert_healthy().await;
}

#[tokio::test]
async fn an_endless_loop_with_ample_fuel_hits_the_wall_clock() {
    let body = run(json!({"code": "while (true) {}", "limits": {"wall_ms": 300}})).await;
    assert_eq!(body["error"]["kind"], "timeout", "{body}");
    assert!(body["usage"]["wall_ms"].as_u64().unwrap() >= 300, "{body}");
    assert_healthy().await;
}

#[tokio::test]
async fn a_memory_bomb_runs_out_of_memory_and_cannot_catch_it() {
    let error = error_of("const a = []; while (true) a.push('x'.repeat(1 << 20) + a.length);", json!({})).await;
    assert_eq!(error["kind"], "out_of_memory", "{error}");
    let error = error_of(
        "try { const a = []; while (true) a.push(new Array(1 << 20).fill(7)); } catch (e) { return 'caught ' + e }",
        json!({"memory_bytes": 32 << 20}),
    )
    .await;
    assert_eq!(error["kind"], "out_of_memory", "an out-of-memory is not catchable: {error}");
    assert_healthy().await;
}

#[tokio::test]
async fn deep_recursion_is_a_catchable_range_error_or_a_stack_overflow() {
    let error = error_of("function f(n) { return f(n + 1) + 1 }\nreturn f(0)", json!({})).await;
    let kind = error["kind"].as_str().unwrap();
    assert!(kind == "stack_overflow" || (kind == "exception" && error["name"] == "RangeError"), "{error}");
    if kind == "exception" {
        let caught = result_of(
            "function f(n) { return f(n + 1) + 1 }\ntry { f(0) } catch (e) { return e instanceof RangeError }",
        )
        .await;
        assert_eq!(caught, json!(true));
    }
    assert_healthy().await;
}

#[tokio::test]
async fn a_console_flood_is_cut_at_the_cap_and_marked() {
    let body =
        run(json!({"code": "while (true) console.log('spam spam spam')", "limits": {"output_bytes": 1000}})).await;
    assert_eq!(body["error"]["kind"], "output_limit", "{body}");
    let logs = body["logs"].as_array().unwrap();
    assert_eq!(logs.last().unwrap()["message"], "[truncated]");
    let lines = &logs[..logs.len() - 1];
    let kept: usize = lines.iter().map(|l| l["message"].as_str().unwrap().len()).sum();
    // Each line costs its bytes and LINE_COST; the cut line too.
    let charged = kept + lines.len() * sandgate::sandbox::LINE_COST as usize;
    assert_eq!(charged, 1000, "output is kept up to the cap exactly");
    assert_healthy().await;
}

#[tokio::test]
async fn a_fifty_megabyte_result_is_an_output_limit() {
    let error = error_of("return 'x'.repeat(50 * 1024 * 1024)", json!({})).await;
    assert_eq!(error["kind"], "output_limit", "{error}");
    let error =
        error_of("return Array.from({length: 5000}, (_, i) => 'item ' + i)", json!({"result_bytes": 10_000})).await;
    assert_eq!(error["kind"], "output_limit", "{error}");
    assert_healthy().await;
}

#[tokio::test]
async fn catastrophic_regex_backtracking_is_bounded() {
    let error = error_of("return /^(a+)+$/.test('a'.repeat(40) + 'b')", json!({"fuel": 2_000_000_000u64})).await;
    assert_eq!(error["kind"], "out_of_fuel", "{error}");
    let error = error_of("return /^(a+)+$/.test('a'.repeat(40) + 'b')", json!({"wall_ms": 200})).await;
    assert_eq!(error["kind"], "timeout", "{error}");
    assert_healthy().await;
}

#[tokio::test]
async fn a_promise_that_never_settles_is_reported_at_once() {
    let body = run(json!({"code": "await new Promise(() => {})"})).await;
    assert_eq!(body["error"]["kind"], "unsettled", "{body}");
    assert_healthy().await;
}

#[tokio::test]
async fn too_many_host_calls_is_a_call_limit() {
    let error = error_of("for (let i = 0; i < 5; i++) await tools.test.echo({i});", json!({"host_calls": 3})).await;
    assert_eq!(error["kind"], "call_limit", "{error}");
    let error = error_of("for (let i = 0; i < 5; i++) await tools.test.echo({i});", json!({"tool_calls": 2})).await;
    assert_eq!(error["kind"], "call_limit", "{error}");
    assert!(error["message"].as_str().unwrap().contains("2 tool calls"), "{error}");
}
