//! Escape probes get errors or nothing, never data; executions share no state.

use serde_json::json;

use crate::harness::*;

#[tokio::test]
async fn no_ambient_authority_is_reachable() {
    let probes = json!({
        "require": "return typeof require",
        "process": "return typeof process",
        "std": "return typeof std",
        "os": "return typeof os",
        "fetch": "return typeof fetch",
        "xhr": "return typeof XMLHttpRequest",
        "websocket": "return typeof WebSocket",
        "deno": "return typeof Deno",
        "wasm": "return typeof WebAssembly",
        "setTimeout": "return typeof setTimeout",
        "host doors": "return Object.getOwnPropertyNames(globalThis).filter(n => n.startsWith('__'))",
        "eval": "return eval('typeof __sg_call') + ',' + (0, eval)('typeof std')",
        "Function": "return Function('return typeof os + typeof this.__sg_log')()",
    });
    let expected = json!({
        "require": "undefined", "process": "undefined", "std": "undefined", "os": "undefined",
        "fetch": "undefined", "xhr": "undefined", "websocket": "undefined", "deno": "undefined",
        "wasm": "undefined", "setTimeout": "undefined", "host doors": [],
        "eval": "undefined,undefined", "Function": "undefinedundefined",
    });
    for (name, code) in probes.as_object().unwrap() {
        assert_eq!(result_of(code.as_str().unwrap()).await, expected[name], "probe {name}");
    }
}

#[tokio::test]
async fn module_imports_fail() {
    for module in ["std", "os", "fs", "node:fs", "/etc/passwd", "https://example.com/x.js"] {
        let error = error_of(&format!("await import('{module}'); return 'imported'"), json!({})).await;
        assert_eq!(error["kind"], "exception", "import('{module}'): {error}");
    }
}

#[tokio::test]
async fn globals_and_prototypes_do_not_leak_between_executions() {
    let first = "globalThis.leaked = 1; Object.prototype.polluted = 'yes'; Array.prototype.push = null; JSON.stringify = () => 'hijacked'; console.log = null; return 1";
    assert_eq!(result_of(first).await, json!(1));
    let second = "console.log('fine'); return [typeof leaked, ({}).polluted === undefined, typeof [].push, JSON.stringify({a: 1})]";
    assert_eq!(result_of(second).await, json!(["undefined", true, "function", "{\"a\":1}"]));
}

#[tokio::test]
async fn math_random_differs_between_executions() {
    let a = result_of("return [Math.random(), Math.random()]").await;
    let b = result_of("return [Math.random(), Math.random()]").await;
    assert_ne!(a, b);
    assert_ne!(a[0], a[1]);
    for value in a.as_array().unwrap() {
        let x = value.as_f64().unwrap();
        assert!((0.0..1.0).contains(&x), "{x}");
    }
}

#[tokio::test]
async fn the_clock_is_real() {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as f64;
    let guest = result_of("return Date.now()").await.as_f64().unwrap();
    assert!((guest - now).abs() < 60_000.0, "guest clock {guest} vs host {now}");
}

#[tokio::test]
async fn the_guest_cannot_change_its_identity() {
    let whoami = result_of("return await tools.test.whoami({user: 'root', team: 'admins'})").await;
    assert_eq!(whoami["user"], "local");
    assert_eq!(whoami["team"], "local");
}
