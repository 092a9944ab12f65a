//! A web page on another origin cannot drive a local sandgate, in a real browser
//! (Debian's `chromium`, headless).
//!
//! The page is served from `http://localhost:PORT` and tries every way a page can
//! send a request without the target's consent: a `text/plain` fetch (a "simple"
//! request, sent without a CORS preflight), a `no-cors` fetch, a form post, a
//! beacon, and a JSON fetch (which needs a preflight). Against a sandgate on its
//! embedded defaults nothing may run and nothing may be recorded. The same page
//! against a sandgate that lists the page's origin in `[http] cors_origins` runs its
//! code, which shows the browser did send what the first server refused.

use std::process::Command;

use axum::response::Html;
use axum::routing::get;

use crate::harness::*;

const CHROMIUM: &str = "/usr/bin/chromium";

/// The attacking page; `?target=` names the sandgate it aims at.
const PAGE: &str = r#"<!doctype html>
<html><body>
<pre id="log"></pre>
<iframe name="sink" style="display:none"></iframe>
<form id="form" method="POST" enctype="text/plain" target="sink">
  <input type="hidden" name='{"code": "return await tools.test.echo({via: \"form\"})", "x": "' value='"}'>
</form>
<script>
const target = new URLSearchParams(location.search).get("target");
document.getElementById("form").action = target + "/v1/execute";
const code = JSON.stringify({code: "return 6 * 7"});
const log = (line) => { document.getElementById("log").textContent += line + "\n"; };
async function attempt(name, run) {
  try { log(name + ": " + await run()); } catch (error) { log(name + ": blocked (" + error.name + ")"); }
}
(async () => {
  await attempt("text/plain fetch", async () => (await fetch(target + "/v1/execute", {method: "POST", body: code, headers: {"content-type": "text/plain"}})).status);
  await attempt("no-cors fetch", async () => (await fetch(target + "/v1/execute", {method: "POST", mode: "no-cors", body: code})).type);
  await attempt("beacon", async () => navigator.sendBeacon(target + "/v1/execute", new Blob([code], {type: "text/plain"})));
  await attempt("form", async () => { document.getElementById("form").submit(); await new Promise(r => setTimeout(r, 1500)); return "submitted"; });
  await attempt("json fetch", async () => JSON.stringify((await (await fetch(target + "/v1/execute", {method: "POST", body: code, headers: {"content-type": "application/json"}})).json()).result));
  log("done");
})();
</script>
</body></html>"#;

/// Serves `page` at `/page.html` on an ephemeral port; returns the port.
fn serve_page(page: &'static str) -> u16 {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        runtime.block_on(async move {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            tx.send(listener.local_addr().unwrap().port()).unwrap();
            let app = axum::Router::new().route("/page.html", get(move || async move { Html(page) }));
            axum::serve(listener, app).await.unwrap();
        });
    });
    rx.recv().unwrap()
}

/// Loads `url` in headless Chromium, waits for the page's script, returns the DOM.
fn load_in_chromium(url: &str) -> String {
    assert!(
        std::path::Path::new(CHROMIUM).exists(),
        "{CHROMIUM} is missing: install Debian's chromium (tests/run does: apt-get install chromium)"
    );
    let profile = temp_dir("chromium-profile");
    let output = Command::new(CHROMIUM)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--virtual-time-budget=15000",
            "--run-all-compositor-stages-before-draw",
            "--dump-dom",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .arg(url)
        .output()
        .expect("chromium runs");
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn executions(server: &TestServer) -> i64 {
    let ledger = rusqlite::Connection::open(server.ledger()).unwrap();
    ledger.query_row("SELECT COUNT(*) FROM executions", [], |row| row.get(0)).unwrap()
}

fn rejected(server: &TestServer, reason: &str) -> u64 {
    let (_, metrics) = get_text(&format!("{}/metrics", server.base), "");
    metrics
        .lines()
        .find(|line| {
            line.starts_with("sandgate_executions_rejected_total") && line.contains(&format!("reason=\"{reason}\""))
        })
        .and_then(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .map_or(0, |n| n as u64)
}

#[test]
fn a_page_on_another_origin_cannot_drive_a_local_sandgate() {
    let port = serve_page(PAGE);
    let page = format!("http://localhost:{port}/page.html");

    // The defaults: local mode, no CORS origins.
    let target = start_server_with("[sandbox]\ntest_capability = true\n", TEST_POLICY);
    let dom = load_in_chromium(&format!("{page}?target={}", target.base));
    assert!(dom.contains("done"), "the page's script did not finish:\n{dom}");
    for attempt in ["text/plain fetch", "no-cors fetch", "beacon", "form", "json fetch"] {
        assert!(dom.contains(&format!("{attempt}:")), "{attempt} was not tried:\n{dom}");
    }
    assert!(!dom.contains("json fetch: 42"), "{dom}");
    assert_eq!(executions(&target), 0, "nothing may run:\n{dom}");
    assert!(rejected(&target, "origin") >= 3, "the browser's requests reached the server and were refused:\n{dom}");

    // Control: a server that lists the page's origin answers the page's JSON fetch,
    // after its preflight, and nothing else (the other bodies are not JSON).
    let allowing = start_server_with(
        &format!("[sandbox]\ntest_capability = true\n[http]\ncors_origins = [\"http://localhost:{port}\"]\n"),
        TEST_POLICY,
    );
    let dom = load_in_chromium(&format!("{page}?target={}", allowing.base));
    assert!(dom.contains("json fetch: 42"), "a listed origin may call the API:\n{dom}");
    assert_eq!(executions(&allowing), 1, "only the JSON fetch ran:\n{dom}");
    assert!(rejected(&allowing, "content_type") >= 3, "{dom}");
}
