//! Concurrent executions and concurrent host calls.

use serde_json::json;

use crate::harness::*;

#[tokio::test]
async fn a_hundred_concurrent_executions_each_get_their_own_result() {
    let runs = (0..100).map(|n| async move {
        let body = run(json!({"code": "globalThis.mine = input.n; await tools.test.sleep({ms: 20}); return {n: mine, doubled: input.n * 2}", "input": {"n": n}})).await;
        (n, body)
    });
    for (n, body) in futures::future::join_all(runs).await {
        assert_eq!(body["result"], json!({"n": n, "doubled": n * 2}), "{body}");
    }
}

#[tokio::test]
async fn promise_all_of_host_calls_takes_the_longest_not_the_sum() {
    let code = "const t = Date.now();\nconst r = await Promise.all(Array.from({length: 10}, (_, i) => tools.test.sleep({ms: 100})));\nreturn {n: r.length, elapsed: Date.now() - t}";
    let started = std::time::Instant::now();
    let body = run(json!({"code": code})).await;
    let elapsed = started.elapsed();
    assert_eq!(body["result"]["n"], 10, "{body}");
    assert_eq!(body["usage"]["host_calls"], 10);
    assert!(elapsed.as_millis() <= 300, "10 × 100 ms calls took {elapsed:?}");
}

#[tokio::test]
async fn waiting_on_the_host_costs_no_fuel() {
    let short = run(json!({"code": "await tools.test.sleep({ms: 0}); return 1"})).await;
    let long = run(json!({"code": "await tools.test.sleep({ms: 300}); return 1"})).await;
    let (short, long) = (short["usage"]["fuel"].as_u64().unwrap(), long["usage"]["fuel"].as_u64().unwrap());
    assert!(long.abs_diff(short) < 100_000, "fuel parked 0 ms: {short}, parked 300 ms: {long}");
}

#[tokio::test]
async fn host_call_results_and_failures_reach_the_code() {
    let code = "const echoed = await tools.test.echo({a: [1, 'two']});\nlet failure;\ntry { await tools.test.fail({message: 'upstream said no'}) } catch (e) { failure = [e.message, e.kind] }\nlet denied;\ntry { await tools.nowhere.nothing() } catch (e) { denied = e.kind }\nreturn {echoed, failure, denied}";
    assert_eq!(
        result_of(code).await,
        json!({"echoed": {"a": [1, "two"]}, "failure": ["upstream said no", "tool_error"], "denied": "tool_denied"})
    );
    let error = error_of("await tools.test.fail({message: 'boom'})", json!({})).await;
    assert_eq!(error["kind"], "tool_error", "{error}");
    assert_eq!(error["message"], "boom");
    let error = error_of("await model.chat({messages: [{role: 'user', content: 'hi'}]})", json!({})).await;
    assert_eq!(error["kind"], "model_denied", "{error}");
    let error = error_of("await model.chat({messages: []})", json!({})).await;
    assert_eq!(error["kind"], "invalid_request", "{error}");
}

#[tokio::test]
async fn a_full_server_sheds_load_with_retry_after() {
    let addr = start_server("[sandbox]\ntest_capability = true\nmax_concurrent = 1\n");
    let base = format!("http://{addr}");
    let slow = post_to(&base, json!({"code": "await tools.test.sleep({ms: 800}); return 'slow'"}));
    let fast = async {
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        client().post(format!("{base}/v1/execute")).json(&json!({"code": "return 1"})).send().await.unwrap()
    };
    let ((slow_status, slow_body), shed) = tokio::join!(slow, fast);
    assert_eq!(slow_status, 200);
    assert_eq!(slow_body["result"], "slow");
    assert_eq!(shed.status(), 503);
    assert_eq!(shed.headers()["retry-after"], "1");
    let body: serde_json::Value = shed.json().await.unwrap();
    assert_eq!(body["error"]["kind"], "overloaded");
    let (status, body) = post_to(&base, json!({"code": "return 2"})).await;
    assert_eq!((status.as_u16(), body["result"].clone()), (200, json!(2)));
}

#[tokio::test]
async fn cpu_bound_executions_do_not_starve_the_server() {
    let busy = (0..4).map(|_| run(json!({"code": "while (true) {}", "limits": {"wall_ms": 1500}})));
    let probe = async {
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        let started = std::time::Instant::now();
        let health = client().get(format!("{}/healthz", base())).send().await.unwrap();
        (health.status(), started.elapsed())
    };
    let (bodies, (status, _elapsed)) = tokio::join!(futures::future::join_all(busy), probe);
    assert_eq!(status, 200);
    for body in bodies {
        assert_eq!(body["error"]["kind"], "timeout", "{body}");
    }
}
