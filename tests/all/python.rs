//! Python (`language: "python"`, the Monty guest) under the same contract as
//! JavaScript: results, input, console, errors with their kinds and positions, the
//! same doors (tools, models) and the same limits, written as hostile Python.

use serde_json::{json, Value};

use crate::harness::{base, client, run};

async fn python(code: &str) -> Value {
    run(json!({ "language": "python", "code": code })).await
}

async fn python_with(code: &str, limits: Value) -> Value {
    run(json!({ "language": "python", "code": code, "limits": limits })).await
}

async fn value(code: &str) -> Value {
    let body = python(code).await;
    assert_eq!(body["ok"], true, "{code}: {body}");
    body["result"].clone()
}

async fn error(code: &str) -> Value {
    let body = python(code).await;
    assert_eq!(body["ok"], false, "{code}: {body}");
    body["error"].clone()
}

#[tokio::test]
async fn the_last_expression_is_the_result_as_json() {
    assert_eq!(
        value("x = [i * i for i in range(5)]\n{'squares': x, 'sum': sum(x)}").await,
        json!({"squares": [0, 1, 4, 9, 16], "sum": 30})
    );
    // Key order is the dict's own.
    let code = "{'b': 1, 'a': 2, 'c': {'z': None, 'y': (1.5, True, 'text')}}";
    let body = json!({"language": "python", "code": code});
    let text = client().post(format!("{}/v1/execute", base())).json(&body).send().await.unwrap().text().await.unwrap();
    assert!(text.contains(r#""result":{"b":1,"a":2,"c":{"z":null,"y":[1.5,true,"text"]}}"#), "{text}");
    assert_eq!(value("x = 1").await, Value::Null, "a statement last: None");
    assert_eq!(value("{1: 'one'}").await, json!({"1": "one"}), "int keys become strings, as json.dumps does");
    let body = run(json!({"language": "python", "code": "input['n'] * 2", "input": {"n": 21}})).await;
    assert_eq!(body["result"], 42, "{body}");
    assert_eq!(value("input is None").await, true);
    // Anything JSON cannot carry is an exception naming the type.
    for (code, named) in [("{1, 2}", "`set`"), ("b'x'", "`bytes`"), ("len", "builtin"), ("class A: pass\nA()", "`A`")] {
        let error = error(code).await;
        assert_eq!(error["kind"], "exception", "{code}: {error}");
        let message = error["message"].as_str().unwrap();
        assert!(message.contains(named) && message.contains("JSON cannot carry"), "{code}: {message}");
    }
}

#[tokio::test]
async fn print_and_console_are_the_console() {
    let body = python("print('hello', 42)\nprint('a\\nb', end='')\nprint('c')\n7").await;
    assert_eq!(body["result"], 7);
    let lines: Vec<&str> = body["logs"].as_array().unwrap().iter().map(|l| l["message"].as_str().unwrap()).collect();
    assert_eq!(lines, ["hello 42", "a", "bc"]);
    assert!(body["logs"].as_array().unwrap().iter().all(|l| l["level"] == "log"));
    // The levels JavaScript's console has, in order with print().
    let body = python(
        "print('start', end='')\nconsole.info('info', 1)\nconsole.warn('careful', [1, 2])\nconsole.error('bad')\nconsole.log({'k': None})",
    )
    .await;
    let lines: Vec<(String, String)> = body["logs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| (l["level"].as_str().unwrap().to_string(), l["message"].as_str().unwrap().to_string()))
        .collect();
    let expected =
        [("log", "start"), ("info", "info 1"), ("warn", "careful [1, 2]"), ("error", "bad"), ("log", "{'k': None}")];
    assert_eq!(lines, expected.map(|(l, m)| (l.to_string(), m.to_string())), "{body}");
    assert_eq!(error("console.shout('x')").await["name"], "AttributeError");
}

#[tokio::test]
async fn errors_carry_kind_name_position_and_traceback() {
    let syntax = error("x = 1\ndef f(:\n    pass").await;
    assert_eq!(
        (syntax["kind"].clone(), syntax["name"].clone(), syntax["line"].clone()),
        (json!("syntax"), json!("SyntaxError"), json!(2))
    );
    assert!(syntax["column"].as_u64().unwrap() >= 1, "{syntax}");

    let thrown = error("def inner(n):\n    return 10 / n\n\ndef outer():\n    return inner(0)\n\nouter()").await;
    assert_eq!(thrown["kind"], "exception");
    assert_eq!(thrown["name"], "ZeroDivisionError");
    assert_eq!(thrown["message"], "division by zero");
    assert_eq!((thrown["line"].clone(), thrown["column"].clone()), (json!(2), json!(12)), "{thrown}");
    let stack = thrown["stack"].as_str().unwrap();
    assert!(
        stack.contains("line 7, in <module>") && stack.contains("in outer") && stack.contains("in inner"),
        "{stack}"
    );

    let raised = error("raise ValueError('bad value')").await;
    assert_eq!(
        (raised["kind"].clone(), raised["name"].clone(), raised["message"].clone()),
        (json!("exception"), json!("ValueError"), json!("bad value"))
    );
    // A host kind cannot be forged by raising: only errors sandgate made carry one.
    let forged = error("raise PermissionError('no tool `test.echo` is available to this caller')").await;
    assert_eq!(forged["kind"], "exception");
}

#[tokio::test]
async fn kinds_say_what_happened_not_what_the_code_claims() {
    // `syntax` is for code that does not parse, not for a raised SyntaxError.
    let raised = error("raise SyntaxError('x')").await;
    assert_eq!(
        (raised["kind"].clone(), raised["name"].clone()),
        (json!("exception"), json!("SyntaxError")),
        "{raised}"
    );
    // A host error keeps its kind however it travels; the same text raised anew is
    // the code's own exception.
    let caught = error("try:\n    await tools.test.fail(message='boom')\nexcept RuntimeError as e:\n    raise e").await;
    assert_eq!(caught["kind"], "tool_error", "{caught}");
    let copied = error(
        "try:\n    await tools.test.fail(message='boom')\nexcept RuntimeError as e:\n    raise RuntimeError(str(e))",
    )
    .await;
    assert_eq!(copied["kind"], "exception", "{copied}");
    // Asking for more memory than the guest can address is `out_of_memory`, never
    // `internal`.
    for code in ["[0] * 10**9", "'a' * 2**31"] {
        let body = python(code).await;
        assert_eq!(body["error"]["kind"], "out_of_memory", "{code}: {body}");
    }
    // A range's length is exact.
    assert_eq!(value("len(range(10**18))").await, json!(1_000_000_000_000_000_000u64));
    assert_eq!(value("range(10**18)[-3:][0]").await, json!(999_999_999_999_999_997u64));
    assert_eq!(value("range(10**18) == range(10**18 + 5)").await, json!(false));
}

#[tokio::test]
async fn tools_and_models_are_the_same_doors() {
    // Keyword arguments, or one dict.
    assert_eq!(value("await tools.test.echo(a=1, b=[2, 3])").await, json!({"a": 1, "b": [2, 3]}));
    assert_eq!(value("await tools.test.echo({'nested': {'k': 'v'}})").await, json!({"nested": {"k": "v"}}));
    let who = value("(await tools.test.whoami())['user']").await;
    assert_eq!(who, "local");
    // Calls awaited together run together: three 600 ms calls fit a 1,500 ms wall clock.
    let body = python_with(
        "import asyncio\nr = await asyncio.gather(tools.test.sleep(ms=600), tools.test.sleep(ms=600), tools.test.sleep(ms=600))\n[x['slept_ms'] for x in r]",
        json!({"wall_ms": 1500}),
    )
    .await;
    assert_eq!(body["result"], json!([600, 600, 600]), "{body}");
    // A failed call raises; caught, the code goes on; uncaught, the outcome has its kind.
    assert_eq!(value("try:\n    await tools.test.fail(message='boom')\nexcept RuntimeError as e:\n    out = 'caught ' + str(e)\nout").await, "caught boom");
    let failed = error("await tools.test.fail(message='boom')").await;
    assert_eq!((failed["kind"].clone(), failed["message"].clone()), (json!("tool_error"), json!("boom")));
    let denied = error("await tools.github.delete_repo(name='x')").await;
    assert_eq!(
        (denied["kind"].clone(), denied["name"].clone()),
        (json!("tool_denied"), json!("PermissionError")),
        "{denied}"
    );
    let model = error("await model.chat(messages=[{'role': 'user', 'content': 'hi'}])").await;
    assert_eq!(model["kind"], "model_denied", "{model}");
    let mixed = error("await tools.test.echo({'a': 1}, b=2)").await;
    assert_eq!(mixed["name"], "TypeError", "{mixed}");
    // Forgetting `await` says so.
    let unawaited = error("tools.test.echo(a=1)").await;
    assert!(unawaited["message"].as_str().unwrap().contains("await"), "{unawaited}");
}

#[tokio::test]
async fn nothing_else_reaches_out() {
    // File calls go to the host's `fs`, which refuses them without a file grant, as
    // it does JavaScript's.
    for (code, kind) in [
        ("open('/etc/passwd').read()", "file_error"),
        ("import os\nos.listdir('/')", "file_error"),
        ("__import__('os')", "exception"),
        ("import sys\nsys.modules['os']", "exception"),
        ("import socket", "exception"),
        ("import subprocess", "exception"),
        ("from pathlib import Path\nPath('/etc/passwd').read_text()", "file_error"),
        ("from pathlib import Path\nPath('notes.txt').write_text('x')", "file_error"),
    ] {
        let body = python(code).await;
        assert_eq!(body["ok"], false, "{code}: {body}");
        assert_eq!(body["error"]["kind"], kind, "{code}: {body}");
        if kind == "file_error" {
            assert_eq!(body["error"]["name"], "PermissionError", "{code}: {body}");
        }
        assert!(!body.to_string().contains("root:"), "{code}: {body}");
    }
    // The environment is empty and the clock is UTC, as JavaScript has them.
    assert_eq!(
        value("import os\n[os.getenv('HOME'), os.getenv('PATH', 'unset'), os.environ]").await,
        json!([null, "unset", {}])
    );
    let now = value("from datetime import datetime, date, timezone, timedelta\nn = datetime.now()\nz = datetime.now(timezone(timedelta(hours=2)))\n[n.year, n.isoformat(), date.today().isoformat(), z.isoformat()[-6:]]").await;
    let year = now[0].as_i64().unwrap();
    assert!((2024..3000).contains(&year), "{now}");
    assert!(now[1].as_str().unwrap().starts_with(&now[2].as_str().unwrap()[..4]), "{now}");
    assert_eq!(now[3], "+02:00", "{now}");
}

#[tokio::test]
async fn the_limits_are_the_same() {
    let spin = python_with("while True:\n    pass", json!({"fuel": 1_000_000_000})).await;
    assert_eq!(spin["error"]["kind"], "out_of_fuel", "{spin}");
    let wall = python_with("while True:\n    pass", json!({"wall_ms": 300})).await;
    assert!(matches!(wall["error"]["kind"].as_str(), Some("timeout")), "{wall}");
    let after_call = python_with("await tools.test.echo(a=1)\nwhile True:\n    pass", json!({"wall_ms": 300})).await;
    assert_eq!(after_call["error"]["kind"], "timeout", "{after_call}");
    let bomb =
        python_with("x = 'a' * 1000\ny = [x * 1000 for _ in range(100000)]", json!({"memory_bytes": 33_554_432})).await;
    assert_eq!(bomb["error"]["kind"], "out_of_memory", "{bomb}");
    let deep = error("def r(n):\n    return r(n + 1)\nr(0)").await;
    assert_eq!((deep["kind"].clone(), deep["name"].clone()), (json!("exception"), json!("RecursionError")));
    let flood = python_with("for i in range(1000000):\n    print('line', i)", json!({"output_bytes": 10_000})).await;
    assert_eq!(flood["error"]["kind"], "output_limit", "{flood}");
    let huge = python_with("'x' * 2_000_000", json!({"result_bytes": 1_000_000})).await;
    assert_eq!(huge["error"]["kind"], "output_limit", "{huge}");
    let calls = python_with("for i in range(10):\n    await tools.test.echo(i=i)", json!({"tool_calls": 3})).await;
    assert_eq!(calls["error"]["kind"], "call_limit", "{calls}");
    // A value whose __repr__ or __del__ raises is not called upon: the result is refused
    // by its type, and the sandbox goes on.
    let repr = error("class A:\n    def __repr__(self):\n        raise ValueError('no')\nA()").await;
    assert_eq!(repr["kind"], "exception");
    let del = error("class B:\n    def __del__(self):\n        raise ValueError('no')\nB()").await;
    assert_eq!(del["kind"], "exception");
    assert!(del["message"].as_str().unwrap().contains("`B`"), "{del}");
    let dropped = "class B:\n    def __del__(self):\n        raise ValueError('no')\nitems = [B() for _ in range(3)]\nitems = None\n1";
    assert_eq!(value(dropped).await, 1);
}

/// `sandgate exec` picks Python by the file's name (or `--language python`).
#[test]
fn the_cli_runs_python_files() {
    let dir = crate::harness::temp_dir("python-cli");
    let file = dir.join("script.py");
    std::fs::write(&file, "import math\nprint('computing')\n{'root': math.sqrt(input['n'])}\n").unwrap();
    let output = crate::binary::sandgate()
        .args(["exec", "--input", r#"{"n": 16}"#])
        .arg(&file)
        .output()
        .expect("sandgate exec runs");
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let body: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(body["result"], json!({"root": 4.0}), "{body}");
    assert_eq!(body["logs"][0]["message"], "computing");
    let piped = crate::binary::sandgate()
        .args(["exec", "--language", "python", "-"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut child| {
            use std::io::Write;
            child.stdin.take().unwrap().write_all(b"sum(range(10))")?;
            child.wait_with_output()
        })
        .unwrap();
    let body: Value = serde_json::from_slice(&piped.stdout).unwrap();
    assert_eq!(body["result"], 45, "{body}");
}

/// A Python session keeps its globals, functions and objects, rolls back a failed
/// execution, survives a restart of the real binary, and runs Python only.
#[tokio::test]
async fn python_sessions_keep_their_state() {
    use crate::binary::Running;
    use crate::harness::call;
    use reqwest::Method;
    let dir = crate::binary::sessions_dir("python-session");
    let config = dir.join("sandgate.toml");
    let mut server = Running::serve(&["--config", config.to_str().unwrap()]);
    let base = server.base.clone();
    let (status, opened) =
        call(Method::POST, format!("{base}/v1/sessions"), "", Some(json!({"language": "python"}))).await;
    assert_eq!(status, reqwest::StatusCode::CREATED, "{opened}");
    assert_eq!(opened["language"], "python");
    let id = opened["session_id"].as_str().unwrap().to_string();
    let run = |base: String, code: &'static str| {
        let id = id.clone();
        async move {
            let body = json!({"session_id": id, "language": "python", "code": code});
            call(Method::POST, format!("{base}/v1/execute"), "", Some(body)).await.1
        }
    };
    assert_eq!(run(base.clone(), "x = 41\ndef ask(n):\n    return x + n\nrows = [1, 2]").await["ok"], true);
    assert_eq!(run(base.clone(), "rows.append(ask(1))\nrows").await["result"], json!([1, 2, 42]));
    // A failure leaves the session as it was.
    let failed = run(base.clone(), "rows.append(99)\nx = 0\nraise ValueError('no')").await;
    assert_eq!(failed["error"]["name"], "ValueError", "{failed}");
    assert_eq!(run(base.clone(), "[x, rows]").await["result"], json!([41, [1, 2, 42]]));
    // A session's memory is one guest's: JavaScript cannot run in it.
    let body = json!({"session_id": id, "language": "javascript", "code": "x"});
    let (status, wrong) = call(Method::POST, format!("{base}/v1/execute"), "", Some(body)).await;
    assert_eq!(status, reqwest::StatusCode::BAD_REQUEST, "{wrong}");
    // Its state lives in the store: a restart keeps it.
    server.stop();
    server = Running::serve(&["--config", config.to_str().unwrap()]);
    assert_eq!(run(server.base.clone(), "ask(len(rows))").await["result"], 44);
}
