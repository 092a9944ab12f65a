//! Budgets that fit real clients: a streamed call holds an estimate of its output,
//! not the `max_tokens` coding agents always send, holds more as it streams, and is
//! cut where a budget ends.

use serde_json::{json, Value};

use crate::harness::*;
use crate::stub::Stub;

const POLICY: &str = r#"
[[policy]]
name = "everyone"
principals = ["*"]
[policy.limits]
[policy.models]
tiers = ["frontier"]

[[policy]]
name = "five dollars"
principals = ["user:five"]
[policy.budget]
scope = "user"
usd_per_day = 5.0

[[policy]]
name = "a quarter"
principals = ["user:tight"]
[policy.budget]
scope = "user"
usd_per_day = 0.25
"#;

/// The tight budget, and the output price of `long`: what one stub chunk (about
/// three words, at most six tokens as the tokenizer counts English) costs.
const TIGHT_USD: f64 = 0.25;
const LONG_OUTPUT_PER_MTOK: f64 = 100.0;
const CHUNK_USD: f64 = 6.0 * LONG_OUTPUT_PER_MTOK / 1e6;

struct Budgets {
    _stub: Stub,
    server: TestServer,
    five: String,
    tight: String,
}

fn serve() -> Budgets {
    let stub = Stub::start();
    std::env::set_var("SANDGATE_BUDGETS_KEY", "sk-stub-budgets");
    let five = api_key("five", "five", "labs", "member");
    let tight = api_key("tight", "tight", "labs", "member");
    let config = format!(
        r#"
[providers.anthropic]
kind = "anthropic"
base_url = "{base}"
api_key_env = "SANDGATE_BUDGETS_KEY"

[providers.openai]
kind = "openai"
base_url = "{base}/v1"
api_key_env = "SANDGATE_BUDGETS_KEY"

[models.opus]
provider = "anthropic"
upstream = "claude-opus-ok+gap0"
tier = "frontier"
input_per_mtok = 15.0
output_per_mtok = 75.0

[models.long]
provider = "openai"
upstream = "gpt-long-ok+gap1"
tier = "frontier"
input_per_mtok = 1.0
output_per_mtok = {LONG_OUTPUT_PER_MTOK}
reserve_output_tokens = 64

[router]
retries = 0

{}{}"#,
        five.entry,
        tight.entry,
        base = stub.base
    );
    let server = start_server_with(&config, POLICY);
    Budgets { _stub: stub, server, five: five.token, tight: tight.token }
}

async fn post(base: &str, path: &str, key: &str, body: Value) -> (u16, String) {
    let response = client()
        .post(format!("{base}{path}"))
        .bearer_auth(key)
        .header("anthropic-version", "2023-06-01")
        .json(&body)
        .send()
        .await
        .unwrap();
    (response.status().as_u16(), response.text().await.unwrap())
}

/// Claude Code asks for 128,000 output tokens on every call: at $75 per million that
/// is $9.60, more than a $5 daily budget. A stream holds an estimate instead, so the
/// calls go through and are charged what they cost.
#[tokio::test]
async fn a_five_dollar_budget_takes_streams_that_ask_for_128000_tokens() {
    let b = serve();
    for turn in 0..3 {
        let body = json!({"model": "opus", "max_tokens": 128000, "stream": true,
            "messages": [{"role": "user", "content": format!("turn {turn} of a coding session")}]});
        let (status, text) = post(&b.server.base, "/v1/messages", &b.five, body).await;
        assert_eq!(status, 200, "{text}");
        assert!(text.contains("event: message_stop"), "the whole stream: {}", tail(&text));
        assert!(text.contains("coding ") && text.contains("session"), "{}", tail(&text));
    }
    // A whole answer cannot be cut short, so it still holds its maximum.
    let whole = json!({"model": "opus", "max_tokens": 128000,
        "messages": [{"role": "user", "content": "not streamed"}]});
    let (status, text) = post(&b.server.base, "/v1/messages", &b.five, whole).await;
    assert_eq!(status, 429, "{text}");
    assert!(text.contains("budget_exceeded") && text.contains("daily USD budget of $5.00"), "{text}");
    let rows = ledger_rows_within(
        &b.server.ledger(),
        "SELECT status, output_tokens, cost_nanousd / 1e9 FROM model_calls WHERE user = 'five'",
        3,
    );
    assert_eq!(rows.len(), 3, "{rows:?}");
    for row in rows {
        assert_eq!(row[0], "ok", "{row:?}");
        assert!(row[2].as_f64().unwrap() < 0.01, "charged what the call cost, not its maximum: {row:?}");
    }
}

/// 40 streams at once, of 5 to 200 words, against a budget that pays for a fraction
/// of them: each holds the model's estimate (64 tokens, which the shortest fit), then
/// more in steps as its output arrives; a step that does not fit cuts the stream
/// there, with a `budget_exceeded` error in the client's format. Spend passes the
/// budget by at most one chunk per stream in flight.
#[tokio::test]
async fn streams_stop_at_the_budget_under_40_concurrent_calls() {
    let b = serve();
    let calls = (0..40).map(|i| {
        let words = vec!["hello"; 5 + 5 * i].join(" ");
        let (base, key) = (b.server.base.clone(), b.tight.clone());
        tokio::spawn(async move {
            let body = json!({"model": "long", "max_tokens": 128000, "stream": true,
                "messages": [{"role": "user", "content": words}]});
            post(&base, "/v1/chat/completions", &key, body).await
        })
    });
    let answers: Vec<(u16, String)> = futures::future::join_all(calls).await.into_iter().map(Result::unwrap).collect();
    let finished = answers.iter().filter(|(status, text)| *status == 200 && text.contains("[DONE]")).count();
    let cut: Vec<&String> = answers
        .iter()
        .filter(|(status, text)| *status == 200 && text.contains("budget_exceeded"))
        .map(|(_, text)| text)
        .collect();
    let refused = answers.iter().filter(|(status, _)| *status == 429).count();
    let summary = format!("{finished} finished, {} cut, {refused} refused", cut.len());
    // At most five of the 40 fail to get their first hold, so one of the six shortest,
    // which need no more than it, starts and finishes.
    assert!(finished >= 1, "some streams fit the budget: {summary}");
    assert!(!cut.is_empty(), "some streams were cut at the budget: {summary}");
    assert_eq!(finished + cut.len() + refused, 40, "{summary}");
    for text in &cut {
        assert!(!text.contains("[DONE]"), "a cut stream does not end as a finished one: {}", tail(text));
        assert!(text.contains("\"type\":\"budget_exceeded\""), "an OpenAI-shaped error event: {}", tail(text));
    }
    let rows = ledger_rows_within(
        &b.server.ledger(),
        "SELECT status, cost_nanousd / 1e9 FROM model_calls WHERE user = 'tight'",
        finished + cut.len(),
    );
    let spent: f64 = rows.iter().map(|row| row[1].as_f64().unwrap()).sum();
    let cut_rows = rows.iter().filter(|row| row[0].as_str().unwrap().starts_with("budget_exceeded")).count();
    assert_eq!(cut_rows, cut.len(), "{rows:?}");
    assert!(spent > TIGHT_USD * 0.5, "the budget was used: ${spent} of ${TIGHT_USD}");
    assert!(
        spent <= TIGHT_USD + 40.0 * CHUNK_USD,
        "spend ${spent} passed the ${TIGHT_USD} budget by more than one chunk per stream"
    );
}

/// The end of a long answer, for a failure's message.
fn tail(text: &str) -> &str {
    let start = text.len().saturating_sub(600);
    let start = (start..text.len()).find(|&i| text.is_char_boundary(i)).unwrap_or(text.len());
    &text[start..]
}
