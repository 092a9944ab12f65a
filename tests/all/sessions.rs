//! Session state in the sandbox: a session's code runs as a global script, and its
//! memory image carries what it declared into the session's next execution.

use std::sync::{Arc, OnceLock};

use sandgate::auth::Principal;
use sandgate::sandbox::{AllowAll, Job, Language, Limits, MemoryImage, Outcome, Registry, Sandbox, SandboxConfig};

use crate::harness::cache_dir;

fn sandbox() -> &'static Sandbox {
    static SANDBOX: OnceLock<Sandbox> = OnceLock::new();
    SANDBOX.get_or_init(|| {
        let mut config: SandboxConfig = sandgate::config::Config::default().sandbox;
        config.cache_dir = Some(cache_dir().into());
        Sandbox::new(config, Registry::default()).expect("the sandbox builds")
    })
}

fn job(code: &str, language: Language, session: Option<&MemoryImage>) -> Job {
    Job {
        code: code.into(),
        language,
        input: None,
        limits: Limits { wall_ms: 2_000, ..Limits::default() },
        principal: Arc::new(Principal::local()),
        call_policy: Arc::new(AllowAll),
        session: session.map(|image| Arc::new(image.clone())),
    }
}

async fn run(code: &str, session: Option<&MemoryImage>) -> Outcome {
    sandbox().execute(job(code, Language::Javascript, session), None).await.expect("the execution runs")
}

fn result(outcome: &Outcome) -> String {
    assert!(outcome.ok, "{:?}", outcome.error);
    outcome.result.as_ref().map(|r| r.get().to_string()).unwrap_or_default()
}

/// Runs `code` in the session at `image` and moves the session on.
async fn step(code: &str, image: &mut MemoryImage) -> String {
    let outcome = run(code, Some(image)).await;
    let value = result(&outcome);
    *image = outcome.session_image.expect("a session's successful execution gives its image");
    value
}

#[tokio::test]
async fn a_session_keeps_what_its_code_declared() {
    let mut session = MemoryImage::default();
    assert_eq!(step("let x = 1", &mut session).await, "null");
    assert_eq!(step("x + 1", &mut session).await, "2");
    assert_eq!(step("const f = (a) => a * 3; class C { m() { return f(x) } }; new C().m()", &mut session).await, "3");
    assert_eq!(step("x = await Promise.resolve(f(10)); x", &mut session).await, "30");
    assert_eq!(
        step("var data = { rows: [1, 2, 3] }; data.rows.push(x); data", &mut session).await,
        r#"{"rows":[1,2,3,30]}"#
    );
    assert_eq!(step("data.rows.reduce((a, b) => a + b, 0)", &mut session).await, "36");

    // Nothing leaks into a fresh execution, or into another session.
    assert_eq!(result(&run("typeof x", None).await), r#""undefined""#);
    assert_eq!(result(&run("typeof x", Some(&MemoryImage::default())).await), r#""undefined""#);
    let fresh = run("let x = 1; return x", None).await;
    assert_eq!(result(&fresh), "1");
    assert!(fresh.session_image.is_none(), "a fresh execution has no session to carry");
}

#[tokio::test]
async fn a_failed_execution_leaves_the_session_where_it_was() {
    let mut session = MemoryImage::default();
    step("let n = 1", &mut session).await;
    let thrown = run("n = 5; throw new Error('boom')", Some(&session)).await;
    assert!(!thrown.ok && thrown.session_image.is_none());
    let error = thrown.error.unwrap();
    assert_eq!((error.kind.as_str(), error.message.as_str(), error.line), ("exception", "boom", Some(1)));
    let syntax = run("let = ;", Some(&session)).await;
    assert_eq!(syntax.error.unwrap().kind.as_str(), "syntax");
    let stopped = run("n = 7; while (true) {}", Some(&session)).await;
    assert!(stopped.session_image.is_none());
    let kind = stopped.error.unwrap().kind;
    assert!(matches!(kind.as_str(), "out_of_fuel" | "timeout"), "{kind}");
    assert_eq!(step("n", &mut session).await, "1", "the state from before the failures");
    // Positions point into the code as submitted.
    let error = run("\n  null.x", Some(&session)).await.error.unwrap();
    assert_eq!((error.line, error.column), (Some(2), Some(3)), "{error:?}");
}

#[tokio::test]
async fn an_image_reads_back_from_bytes_and_grows_with_the_heap() {
    let mut session = MemoryImage::default();
    step("let greeting = 'hello'", &mut session).await;
    let small = session.encode().len();
    let mut session = MemoryImage::decode(&session.encode()).unwrap();
    assert_eq!(step("greeting + ' again'", &mut session).await, r#""hello again""#);
    step("globalThis.big = 'ab'.repeat(1 << 20); big.length", &mut session).await;
    let large = session.encode().len();
    assert!(large > small + (2 << 20), "{small} then {large} bytes");
    assert_eq!(step("big.length", &mut session).await, "2097152");
    println!("session image: {small} bytes after a string, {large} with 2 MiB more");
}

#[tokio::test]
async fn typescript_runs_in_a_session_too() {
    let mut session = MemoryImage::default();
    let outcome = sandbox()
        .execute(job("let t: number = 4; interface P { x: number }", Language::Typescript, Some(&session)), None)
        .await
        .unwrap();
    result(&outcome);
    session = outcome.session_image.unwrap();
    assert_eq!(step("t * 2", &mut session).await, "8");
}
