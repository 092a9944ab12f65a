//! Session workspaces and policy mounts, against the real binary: files that last
//! across executions and a restart, uploads and downloads, quotas, and escape
//! attempts (`..`, absolute paths, symlinks planted in a mount, long names, many
//! small files).

use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};

use crate::binary::{served_dir, Running};
use crate::harness::{api_key, call, client, ApiKey};

struct Served {
    server: Running,
    base: String,
    config: PathBuf,
    /// A read-only mount (`datasets`) and a writable one (`out`), on the host.
    datasets: PathBuf,
    out: PathBuf,
    alice: String,
    bob: String,
}

/// The real binary with keys for alice (sessions, files, two mounts; quotas of 4,096
/// bytes and 20 entries) and bob (sessions only).
fn start(label: &str) -> Served {
    let dir = served_dir(label);
    let (datasets, out) = (dir.join("datasets"), dir.join("out"));
    std::fs::create_dir_all(&datasets).unwrap();
    std::fs::create_dir_all(&out).unwrap();
    std::fs::write(datasets.join("cities.csv"), "name,pop\nLyon,522000\n").unwrap();
    std::fs::write(
        dir.join("policies/all.toml"),
        format!(
            r#"[[policy]]
name = "alice"
principals = ["user:alice"]
[policy.limits]
[policy.sessions]
[policy.files]
max_bytes = 4096
max_files = 20
mounts = [
  {{ path = "{}", as = "datasets", mode = "ro" }},
  {{ path = "{}", as = "out", mode = "rw" }},
]

[[policy]]
name = "bob"
principals = ["user:bob"]
[policy.limits]
[policy.sessions]
"#,
            datasets.display(),
            out.display()
        ),
    )
    .unwrap();
    let ApiKey { token: alice, entry: a } = api_key("alice", "alice", "labs", "member");
    let ApiKey { token: bob, entry: b } = api_key("bob", "bob", "labs", "member");
    let config = dir.join("sandgate.toml");
    std::fs::write(&config, format!("policies = \"policies\"\n[ledger]\npath = \"ledger.db\"\n{a}{b}")).unwrap();
    let server = Running::serve(&["--config", config.to_str().unwrap()]);
    Served { base: server.base.clone(), server, config, datasets, out, alice, bob }
}

async fn open(base: &str, key: &str) -> String {
    let (status, opened) = call(Method::POST, format!("{base}/v1/sessions"), key, Some(json!({}))).await;
    assert_eq!(status, StatusCode::CREATED, "{opened}");
    opened["session_id"].as_str().unwrap().to_string()
}

async fn execute(base: &str, key: &str, session: Option<&str>, code: &str) -> Value {
    let mut body = json!({ "code": code });
    if let Some(session) = session {
        body["session_id"] = json!(session);
    }
    call(Method::POST, format!("{base}/v1/execute"), key, Some(body)).await.1
}

/// The result of a successful execution.
async fn ok(base: &str, key: &str, session: Option<&str>, code: &str) -> Value {
    let body = execute(base, key, session, code).await;
    assert_eq!(body["ok"], true, "{code}: {body}");
    body["result"].clone()
}

/// The error of a failed execution, as `[kind, code]`, and its message.
async fn refused(base: &str, key: &str, session: Option<&str>, code: &str) -> (Value, String) {
    let body = execute(base, key, session, code).await;
    assert_eq!(body["ok"], false, "{code}: {body}");
    let message = body["error"]["message"].as_str().unwrap_or_default().to_string();
    let code = message.split(':').next().unwrap_or_default().to_string();
    (json!([body["error"]["kind"], code]), message)
}

async fn put(base: &str, key: &str, session: &str, path: &str, data: &'static [u8]) -> (StatusCode, Value) {
    let response = client()
        .put(format!("{base}/v1/sessions/{session}/files/{path}"))
        .bearer_auth(key)
        .header("content-type", "application/octet-stream")
        .body(data)
        .send()
        .await
        .unwrap();
    let status = response.status();
    (status, response.json().await.unwrap_or(Value::Null))
}

async fn get(base: &str, key: &str, session: &str, path: &str) -> (StatusCode, Vec<u8>) {
    let response =
        client().get(format!("{base}/v1/sessions/{session}/files/{path}")).bearer_auth(key).send().await.unwrap();
    (response.status(), response.bytes().await.unwrap().to_vec())
}

#[tokio::test]
async fn a_workspace_keeps_its_files_across_executions_and_a_restart() {
    let mut served = start("workspace");
    let (alice, bob) = (served.alice.clone(), served.bob.clone());
    let base = served.base.clone();
    let id = open(&base, &alice).await;
    let s = Some(id.as_str());

    let listed = ok(
        &base,
        &alice,
        s,
        r#"await fs.writeFile("notes.txt", "hello");
           await fs.mkdir("data/raw", { recursive: true });
           await fs.writeFile("data/raw/a.json", JSON.stringify({ n: 1 }));
           await fs.appendFile("notes.txt", " world");
           await fs.readdir(".")"#,
    )
    .await;
    assert_eq!(listed, json!(["data", "datasets", "notes.txt", "out"]), "mounts show at the top level");
    let read = ok(
        &base,
        &alice,
        s,
        r#"const s = await fs.stat("notes.txt");
           [await fs.readFile("notes.txt"), JSON.parse(await fs.readFile("data/raw/a.json", "utf8")).n,
            s.isFile(), s.size, (await fs.stat("data")).isDirectory(), await fs.exists("nothing")]"#,
    )
    .await;
    assert_eq!(read, json!(["hello world", 1, true, 11, true, false]));

    // A failed execution rolls its file changes back with its memory.
    let (error, _) = refused(
        &base,
        &alice,
        s,
        r#"await fs.writeFile("notes.txt", "changed"); await fs.rm("data", { recursive: true });
           await fs.writeFile("stray.txt", "x"); throw new Error("no")"#,
    )
    .await;
    assert_eq!(error, json!(["exception", "no"]));
    let after = ok(
        &base,
        &alice,
        s,
        r#"[await fs.readFile("notes.txt"), await fs.readdir("data/raw"), await fs.exists("stray.txt")]"#,
    )
    .await;
    assert_eq!(after, json!(["hello world", ["a.json"], false]));

    // Missing files and wrong kinds read as Node's errors do.
    let caught = ok(
        &base,
        &alice,
        s,
        r#"const codes = [];
           for (const f of [() => fs.readFile("missing.txt"), () => fs.readFile("data"), () => fs.mkdir("data"),
                            () => fs.rm("data"), () => fs.writeFile("nope/x.txt", "x")]) {
             try { await f(); codes.push("none") } catch (e) { codes.push(e.code + "/" + e.kind) }
           }
           codes"#,
    )
    .await;
    assert_eq!(
        caught,
        json!([
            "ENOENT/file_error",
            "EISDIR/file_error",
            "EEXIST/file_error",
            "EISDIR/file_error",
            "ENOENT/file_error"
        ])
    );

    // Clients put inputs in and take results out.
    let (status, body) = put(&base, &alice, &id, "in/table.csv", b"a,b\n1,2\n").await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let rows = ok(
        &base,
        &alice,
        s,
        r#"const rows = (await fs.readFile("in/table.csv")).trim().split("\n");
           await fs.writeFile("result.bin", "AAEC/w==", { encoding: "base64" });
           await fs.rename("notes.txt", "data/notes.txt");
           rows.length"#,
    )
    .await;
    assert_eq!(rows, 2);
    assert_eq!(get(&base, &alice, &id, "result.bin").await, (StatusCode::OK, vec![0, 1, 2, 255]));
    assert_eq!(get(&base, &alice, &id, "data/notes.txt").await, (StatusCode::OK, b"hello world".to_vec()));
    assert_eq!(get(&base, &alice, &id, "notes.txt").await.0, StatusCode::NOT_FOUND);
    let (status, listing) = call(Method::GET, format!("{base}/v1/sessions/{id}/files"), &alice, None).await;
    assert_eq!(status, StatusCode::OK);
    let paths: Vec<&str> = listing["files"].as_array().unwrap().iter().map(|f| f["path"].as_str().unwrap()).collect();
    assert_eq!(paths, ["data", "data/notes.txt", "data/raw", "data/raw/a.json", "in", "in/table.csv", "result.bin"]);
    let (_, shown) = call(Method::GET, format!("{base}/v1/sessions/{id}"), &alice, None).await;
    assert_eq!((shown["files"].clone(), shown["file_bytes"].clone()), (json!(7), json!(11 + 7 + 8 + 4)), "{shown}");

    // Nobody else reaches them.
    assert_eq!(get(&base, &bob, &id, "result.bin").await.0, StatusCode::NOT_FOUND);
    assert_eq!(put(&base, &bob, &id, "x.txt", b"x").await.0, StatusCode::NOT_FOUND);
    let (status, _) = call(Method::GET, format!("{base}/v1/sessions/{id}/files"), &bob, None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    // Mounts: read-only stays so; writable writes land on the host at once.
    let mounted = ok(
        &base,
        &alice,
        s,
        r#"const csv = await fs.readFile("datasets/cities.csv");
           let refused = null;
           try { await fs.writeFile("datasets/cities.csv", "") } catch (e) { refused = e.code }
           await fs.writeFile("out/report.txt", csv.split("\n")[1]);
           [refused, await fs.readdir("datasets")]"#,
    )
    .await;
    assert_eq!(mounted, json!(["EROFS", ["cities.csv"]]));
    assert_eq!(std::fs::read_to_string(served.out.join("report.txt")).unwrap(), "Lyon,522000");
    assert_eq!(std::fs::read_to_string(served.datasets.join("cities.csv")).unwrap(), "name,pop\nLyon,522000\n");

    // The workspace lives in the store: a restart between two executions keeps it.
    served.server.stop();
    served.server = Running::serve(&["--config", served.config.to_str().unwrap()]);
    let base = served.server.base.clone();
    let again =
        ok(&base, &alice, s, r#"[await fs.readFile("data/notes.txt"), await fs.readFile("in/table.csv")]"#).await;
    assert_eq!(again, json!(["hello world", "a,b\n1,2\n"]));

    // Bob has sessions but no file grant: his session has a workspace, and outside a
    // session he has no file access at all.
    let bobs = open(&base, &bob).await;
    assert_eq!(
        ok(&base, &bob, Some(&bobs), r#"await fs.writeFile("b.txt", "b"); await fs.readdir()"#).await,
        json!(["b.txt"])
    );
    let (error, message) = refused(&base, &bob, None, r#"await fs.readFile("b.txt")"#).await;
    assert_eq!(error, json!(["file_error", "EACCES"]), "{message}");
    let (error, _) = refused(&base, &bob, Some(&bobs), r#"await fs.readFile("datasets/cities.csv")"#).await;
    assert_eq!(error, json!(["file_error", "ENOENT"]), "alice's mounts are not bob's");

    // The ledger counts the bytes written, attributed to each.
    let (_, usage) = call(Method::GET, format!("{base}/v1/usage"), &alice, None).await;
    let written = usage["totals"]["file_bytes_written"].as_u64().unwrap();
    assert!(written >= 11 + 7 + 8 + 4 + 11, "{usage}");

    // Ending the session ends its files.
    let (status, _) = call(Method::DELETE, format!("{base}/v1/sessions/{id}/files/in"), &alice, None).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    assert_eq!(get(&base, &alice, &id, "in/table.csv").await.0, StatusCode::NOT_FOUND);
    let (status, _) = call(Method::DELETE, format!("{base}/v1/sessions/{id}"), &alice, None).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    assert_eq!(get(&base, &alice, &id, "result.bin").await.0, StatusCode::NOT_FOUND);
}

fn symlink(target: &Path, link: &Path) {
    std::os::unix::fs::symlink(target, link).unwrap();
}

#[tokio::test]
async fn escape_attempts_are_refused() {
    let served = start("workspace-escape");
    let (alice, base) = (served.alice.clone(), served.base.clone());
    let id = open(&base, &alice).await;
    let s = Some(id.as_str());
    let secret = served.config.parent().unwrap().join("secret.txt");
    std::fs::write(&secret, "top secret").unwrap();
    // Symlinks planted in the writable mount, pointing out of it.
    symlink(Path::new("/etc"), &served.out.join("etc"));
    symlink(&secret, &served.out.join("secret"));
    symlink(Path::new("../secret.txt"), &served.out.join("relative"));

    for (code, expected) in [
        (r#"await fs.readFile("../secret.txt")"#, "EACCES"),
        (r#"await fs.readFile("/etc/passwd")"#, "EACCES"),
        (r#"await fs.readFile("data/../../secret.txt")"#, "EACCES"),
        (r#"await fs.readFile("out/../../secret.txt")"#, "EACCES"),
        (r#"await fs.readdir("/")"#, "EACCES"),
        (r#"await fs.readFile("out/etc/passwd")"#, "EACCES"),
        (r#"await fs.readFile("out/secret")"#, "EACCES"),
        (r#"await fs.readFile("out/relative")"#, "EACCES"),
        (r#"await fs.writeFile("out/etc/evil", "x")"#, "EACCES"),
        (r#"await fs.writeFile("out/secret", "overwritten")"#, "EACCES"),
        (r#"await fs.rename("out/secret", "out/moved")"#, "none"),
        (r#"await fs.readFile("out/moved")"#, "EACCES"),
        (r#"await fs.readdir("out/etc")"#, "EACCES"),
        (r#"await fs.writeFile("x".repeat(300), "x")"#, "ENAMETOOLONG"),
        (r#"await fs.writeFile("d/".repeat(2100) + "x", "x")"#, "ENAMETOOLONG"),
        (r#"await fs.writeFile("a\0b", "x")"#, "EINVAL"),
        (r#"await fs.rename("out/report", "x.txt")"#, "EXDEV"),
    ] {
        let body = execute(&base, &alice, s, code).await;
        let got = if body["ok"] == true {
            "none".to_string()
        } else {
            assert_eq!(body["error"]["kind"], "file_error", "{code}: {body}");
            body["error"]["message"].as_str().unwrap().split(':').next().unwrap().to_string()
        };
        assert_eq!(got, expected, "{code}: {body}");
        assert!(!body.to_string().contains("top secret") && !body.to_string().contains("root:"), "{body}");
    }
    assert_eq!(std::fs::read_to_string(&secret).unwrap(), "top secret");
    assert!(!Path::new("/etc/evil").exists());

    // Many small files: the count quota holds at write time, and so does the byte quota.
    let written = ok(
        &base,
        &alice,
        s,
        r#"let n = 0, code = null;
           try { for (; n < 100; n++) await fs.writeFile(`f${n}.txt`, "x") } catch (e) { code = e.code }
           [n, code]"#,
    )
    .await;
    assert_eq!(written, json!([20, "EDQUOT"]));
    let (error, message) = refused(&base, &alice, s, r#"await fs.writeFile("f0.txt", "y".repeat(5000))"#).await;
    assert_eq!(error, json!(["file_error", "EDQUOT"]), "{message}");
    assert!(message.contains("files.max_bytes"), "{message}");

    // Over HTTP: the same paths are refused before they touch anything.
    for path in ["..%2Fsecret.txt", "%2Fetc%2Fpasswd", "a%2F..%2F..%2Fsecret.txt"] {
        let (status, body) = put(&base, &alice, &id, path, b"x").await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{path}: {body}");
        assert_eq!(get(&base, &alice, &id, path).await.0, StatusCode::BAD_REQUEST, "{path}");
    }
    let long = "y".repeat(300);
    assert_eq!(put(&base, &alice, &id, &long, b"x").await.0, StatusCode::BAD_REQUEST);
    let (status, body) = put(&base, &alice, &id, "f0.txt/inner", b"x").await;
    assert_eq!((status, body["error"]["kind"].clone()), (StatusCode::CONFLICT, json!("file_error")), "{body}");
    let (status, body) = put(&base, &alice, &id, "new.txt", b"x").await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "the workspace is full: {body}");
    assert!(body["error"]["message"].as_str().unwrap().starts_with("EDQUOT"), "{body}");
}

/// A Python execution: its result, or its error as `[kind, name]`.
async fn python(base: &str, key: &str, session: Option<&str>, code: &str) -> Result<Value, (Value, Value)> {
    let mut body = json!({ "code": code, "language": "python" });
    if let Some(session) = session {
        body["session_id"] = json!(session);
    }
    let (_, body) = call(Method::POST, format!("{base}/v1/execute"), key, Some(body)).await;
    if body["ok"] == true {
        Ok(body["result"].clone())
    } else {
        Err((json!([body["error"]["kind"], body["error"]["name"]]), body["error"]["message"].clone()))
    }
}

#[tokio::test]
async fn python_reaches_the_same_workspace_with_open_and_pathlib() {
    let served = start("workspace-python");
    let (alice, bob, base) = (served.alice.clone(), served.bob.clone(), served.base.clone());
    let (status, opened) =
        call(Method::POST, format!("{base}/v1/sessions"), &alice, Some(json!({"language": "python"}))).await;
    assert_eq!(status, StatusCode::CREATED, "{opened}");
    let id = opened["session_id"].as_str().unwrap().to_string();
    let s = Some(id.as_str());

    let written = python(
        &base,
        &alice,
        s,
        r#"from pathlib import Path
Path("data/raw").mkdir(parents=True)
n = Path("notes.txt").write_text("hello")
with open("notes.txt", "a") as f:
    f.write(" world")
Path("blob.bin").write_bytes(b"\x00\x01\xff")
Path("data/raw/a.json").write_text('{"n": 1}')
[n, sorted(str(p) for p in Path(".").iterdir()), sorted(str(p) for p in Path("data").iterdir())]"#,
    )
    .await
    .unwrap();
    assert_eq!(
        written,
        json!([5, ["blob.bin", "data", "datasets", "notes.txt", "out"], ["data/raw"]]),
        "mounts show at the top level, as in JavaScript"
    );

    // The next execution of the session, and JavaScript's view of the same files.
    let read = python(
        &base,
        &alice,
        s,
        r#"from pathlib import Path
import json
p = Path("notes.txt")
with open("data/raw/a.json") as f:
    n = json.loads(f.read())["n"]
[p.read_text(), list(Path("blob.bin").read_bytes()), n, p.exists(), p.is_file(), Path("data").is_dir(),
 Path("nothing").exists(), p.stat().st_size, open("notes.txt").readlines()]"#,
    )
    .await
    .unwrap();
    assert_eq!(read, json!(["hello world", [0, 1, 255], 1, true, true, true, false, 11, ["hello world"]]));
    assert_eq!(get(&base, &alice, &id, "notes.txt").await, (StatusCode::OK, b"hello world".to_vec()));

    // Python's exceptions for the host's file errors, catchable.
    let caught = python(
        &base,
        &alice,
        s,
        r#"from pathlib import Path
names = []
for f in [lambda: Path("missing.txt").read_text(), lambda: open("data"), lambda: Path("data").mkdir(),
          lambda: Path("data").rmdir(), lambda: Path("blob.bin").write_bytes(b"x" * 5000),
          lambda: Path("datasets/cities.csv").write_text(""), lambda: Path("../secret.txt").read_text(),
          lambda: Path("/etc/passwd").read_text(), lambda: Path("blob.bin").read_text()]:
    try:
        f()
        names.append("none")
    except Exception as e:
        names.append(type(e).__name__)
Path("data").mkdir(exist_ok=True)
Path("data/raw/a.json").unlink()
Path("data/raw").rmdir()
Path("notes.txt").rename("data/notes.txt")
names"#,
    )
    .await
    .unwrap();
    assert_eq!(
        caught,
        json!([
            "FileNotFoundError",
            "IsADirectoryError",
            "FileExistsError",
            "OSError",
            "OSError",
            "PermissionError",
            "PermissionError",
            "PermissionError",
            "UnicodeDecodeError"
        ]),
        "ENOENT, EISDIR, EEXIST, ENOTEMPTY, EDQUOT, EROFS, and a path leading outside"
    );
    let listing = python(&base, &alice, s, r#"import pathlib; sorted(str(p) for p in pathlib.Path("data").iterdir())"#)
        .await
        .unwrap();
    assert_eq!(listing, json!(["data/notes.txt"]));

    // Mounts, and a failure that rolls the workspace back with the interpreter's state.
    let csv = python(&base, &alice, s, r#"open("datasets/cities.csv").read().splitlines()[1]"#).await.unwrap();
    assert_eq!(csv, json!("Lyon,522000"));
    let (error, _) =
        python(&base, &alice, s, "open('stray.txt', 'w').write('x')\nraise ValueError('no')").await.unwrap_err();
    assert_eq!(error, json!(["exception", "ValueError"]));
    assert_eq!(get(&base, &alice, &id, "stray.txt").await.0, StatusCode::NOT_FOUND);

    // Uncaught, a file error is the host's kind, with Python's class as its name.
    let (error, message) = python(&base, &alice, s, r#"open("gone.txt").read()"#).await.unwrap_err();
    assert_eq!(error, json!(["file_error", "FileNotFoundError"]), "{message}");

    // Without a file grant (bob, outside a session), every file call is refused.
    let (error, message) = python(&base, &bob, None, r#"open("b.txt", "w").write("b")"#).await.unwrap_err();
    assert_eq!(error, json!(["file_error", "PermissionError"]), "{message}");
    assert!(message.as_str().unwrap().starts_with("EACCES"), "{message}");

    // A file call made while tool calls are in flight still returns its own reply.
    let mixed = python(
        &base,
        &alice,
        s,
        r#"async def attempt(call):
    try:
        await call
        return "none"
    except Exception as e:
        return type(e).__name__
async def main():
    first, second = attempt(tools.nothing.here()), attempt(tools.nothing.there())
    text = open("data/notes.txt").read()
    return [text, [await first, await second]]
await main()"#,
    )
    .await
    .unwrap();
    assert_eq!(mixed, json!(["hello world", ["PermissionError", "PermissionError"]]));
}
