//! Every client format reaches every provider format: Chat Completions, Messages,
//! Responses and Gemini clients (their official SDKs) against providers of each
//! format (the stub), streaming and not, with tool calls translated both ways and
//! every token in the ledger.

use std::collections::BTreeMap;

use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

use crate::harness::*;
use crate::stub::{python_client, require_python_module, Stub};

const POLICY: &str = r#"
[[policy]]
name = "everyone"
principals = ["*"]
[policy.limits]
[policy.models]
tiers = ["standard"]

[[policy]]
name = "private"
principals = ["user:private"]
[policy.models]
strip_headers = ["user-agent", "X-App"]

[[policy]]
name = "one a minute"
principals = ["user:counted"]
[policy.rate]
model_calls_per_minute = 1
"#;

/// The four providers, one per format, and a model on each (`NAME-agent` for the
/// scripted agent turns).
const MODELS: [(&str, &str, &str); 4] = [
    ("on-chat", "chat", "gpt-ok"),
    ("on-messages", "messages", "claude-ok"),
    ("on-responses", "responses", "resp-ok"),
    ("on-gemini", "gemini", "gemini-ok"),
];

fn config(stub: &Stub, key: &ApiKey) -> String {
    let mut config = format!(
        "{}\n[providers.chat]\nkind = \"openai\"\nbase_url = \"{base}/v1\"\napi_key_env = \"SANDGATE_FORMATS_KEY\"\n\
         [providers.messages]\nkind = \"anthropic\"\nbase_url = \"{base}\"\napi_key_env = \"SANDGATE_FORMATS_KEY\"\n\
         [providers.responses]\nkind = \"openai-responses\"\nbase_url = \"{base}/v1\"\napi_key_env = \"SANDGATE_FORMATS_KEY\"\n\
         [providers.gemini]\nkind = \"gemini\"\nbase_url = \"{base}\"\napi_key_env = \"SANDGATE_FORMATS_KEY\"\n\
         [router]\nretries = 0\n",
        key.entry,
        base = stub.base
    );
    for (name, provider, upstream) in MODELS {
        for (suffix, modifier) in [("", ""), ("-agent", "+agent")] {
            config.push_str(&format!(
                "[models.{name}{suffix}]\nprovider = \"{provider}\"\nupstream = \"{upstream}{modifier}\"\ntier = \"standard\"\n\
                 input_per_mtok = 1.0\noutput_per_mtok = 2.0\n"
            ));
        }
    }
    config
}

fn serve(label: &str) -> (Stub, TestServer, String) {
    let stub = Stub::start();
    std::env::set_var("SANDGATE_FORMATS_KEY", "sk-stub-formats");
    let key = api_key(label, label, "formats", "member");
    let server = start_server_with(&config(&stub, &key), POLICY);
    (stub, server, key.token)
}

#[test]
fn every_sdk_reaches_every_provider_streaming_or_not() {
    require_python_module("openai, anthropic, google.genai", "openai anthropic google-genai");
    let (stub, server, key) = serve("sdks");
    let mut cases = Vec::new();
    for api in ["chat", "messages", "responses", "gemini"] {
        let base = match api {
            "chat" | "responses" => format!("{}/v1", server.base),
            _ => server.base.clone(),
        };
        for (model, ..) in MODELS {
            for stream in [false, true] {
                let text = format!("from {api} to {model} streamed {stream}");
                cases.push(
                    json!({"api": api, "base": base, "key": key, "model": model, "text": text, "stream": stream}),
                );
            }
        }
    }
    let results = python_client("formats_client.py", &[&Value::Array(cases.clone()).to_string()]);
    let results = results.as_array().expect("one result per case");
    assert_eq!(results.len(), cases.len());
    for (case, result) in cases.iter().zip(results) {
        let text = case["text"].as_str().unwrap();
        let words = text.split_whitespace().count() as u64;
        assert_eq!(result["ok"], true, "{case}: {result}");
        assert_eq!(result["text"], format!("echo: {text}"), "{case}: {result}");
        assert_eq!(result["usage"], json!({"input": words, "output": words + 1}), "{case}: {result}");
    }
    // Every call in the ledger, attributed, at the provider's own count.
    let billed: u64 = stub.billed().values().map(|(input, output)| input + output).sum();
    let rows = ledger_rows_at(
        &server.ledger(),
        "SELECT COUNT(*), SUM(input_tokens + output_tokens) FROM model_calls WHERE user = 'sdks' AND status = 'ok'",
    );
    assert_eq!(rows[0][0], json!(cases.len()), "{rows:?}");
    assert_eq!(rows[0][1], json!(billed), "{rows:?}");
    // Each provider got requests in its own format, on its own route.
    let paths: BTreeMap<String, usize> = stub.requests().iter().fold(BTreeMap::new(), |mut paths, r| {
        *paths.entry(r.path.split(':').next().unwrap().to_string()).or_default() += 1;
        paths
    });
    assert_eq!(
        paths,
        BTreeMap::from([
            ("/v1/chat/completions".to_string(), 8),
            ("/v1/messages".to_string(), 8),
            ("/v1/responses".to_string(), 8),
            ("/v1beta/models/gemini-ok".to_string(), 8),
        ])
    );
}

/// A Responses request as Codex sends one: developer instructions, the MCP server's
/// tools in a `namespace`, the transcript so far in `input`.
fn codex_request(model: &str, input: Vec<Value>) -> Value {
    let mut items = vec![
        json!({"type": "message", "role": "developer", "content": [{"type": "input_text", "text": "You are a coding agent."}]}),
    ];
    items.extend(input);
    json!({
        "model": model, "stream": true, "store": false, "input": items,
        "tools": [
            {"type": "function", "name": "exec_command", "description": "Run a command", "strict": false,
                "parameters": {"type": "object", "properties": {"cmd": {"type": "string"}}}},
            {"type": "namespace", "name": "mcp__sandgate", "description": "sandgate", "tools": [
                {"type": "function", "name": "execute", "description": "Run code", "strict": false,
                    "parameters": {"type": "object", "properties": {"code": {"type": "string"}}, "required": ["code"]}}]},
        ],
        "tool_choice": "auto", "parallel_tool_calls": true, "reasoning": {"summary": "auto"},
        "include": ["reasoning.encrypted_content"], "prompt_cache_key": "thread-1",
        "client_metadata": {"thread_id": "thread-1"},
    })
}

/// The items a Responses stream's `response.output_item.done` events carry, and its
/// `response.completed`.
fn responses_items(body: &str) -> (Vec<Value>, Value) {
    let mut items = Vec::new();
    let mut completed = Value::Null;
    for line in body.lines() {
        let Some(data) = line.strip_prefix("data: ") else { continue };
        let event: Value = serde_json::from_str(data).unwrap();
        match event["type"].as_str() {
            Some("response.output_item.done") => items.push(event["item"].clone()),
            Some("response.completed") => completed = event["response"].clone(),
            _ => {}
        }
    }
    (items, completed)
}

#[tokio::test]
async fn codex_turns_keep_their_namespaces_on_every_provider() {
    let (_stub, server, key) = serve("codex");
    for (model, ..) in MODELS {
        let model = format!("{model}-agent");
        let ask = json!({"type": "message", "role": "user", "content": [{"type": "input_text", "text": "what is six times seven"}]});
        let response = client()
            .post(format!("{}/v1/responses", server.base))
            .bearer_auth(&key)
            .json(&codex_request(&model, vec![ask.clone()]))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK, "{model}");
        assert!(response.headers()["content-type"].to_str().unwrap().starts_with("text/event-stream"));
        let (items, completed) = responses_items(&response.text().await.unwrap());
        assert_eq!(items.len(), 1, "{model}: {items:?}");
        let call = &items[0];
        assert_eq!(call["type"], "function_call", "{model}: {call}");
        assert_eq!(
            (call["name"].as_str(), call["namespace"].as_str()),
            (Some("execute"), Some("mcp__sandgate")),
            "{model}: {call}"
        );
        let arguments: Value = serde_json::from_str(call["arguments"].as_str().unwrap()).unwrap();
        assert_eq!(arguments, json!({"code": "return 6 * 7"}), "{model}");
        assert!(
            completed["id"].is_string() && completed["usage"]["total_tokens"].as_u64() > Some(0),
            "{model}: {completed}"
        );

        // The call's answer comes back; the model finishes the turn with it.
        let answered = vec![
            ask,
            call.clone(),
            json!({"type": "function_call_output", "call_id": call["call_id"],
                "output": [{"type": "input_text", "text": "Wall time: 0.01 seconds\nOutput:"}, {"type": "input_text", "text": "42"}]}),
        ];
        let response = client()
            .post(format!("{}/v1/responses", server.base))
            .bearer_auth(&key)
            .json(&codex_request(&model, answered))
            .send()
            .await
            .unwrap();
        let (items, _) = responses_items(&response.text().await.unwrap());
        assert_eq!(items.len(), 1, "{model}: {items:?}");
        let text = items[0]["content"][0]["text"].as_str().unwrap_or_default();
        assert!(text.starts_with("DONE:") && text.ends_with("42"), "{model}: {}", items[0]);
    }
}

#[tokio::test]
async fn hosted_tools_go_only_to_providers_that_run_them() {
    let (_stub, server, key) = serve("hosted");
    let body = |model: &str| json!({"model": model, "input": "hi", "store": false, "tools": [{"type": "web_search", "external_web_access": false}]});
    let (status, refused) =
        call(Method::POST, format!("{}/v1/responses", server.base), &key, Some(body("on-chat"))).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{refused}");
    assert!(refused["error"]["message"].as_str().unwrap().contains("`web_search`"), "{refused}");
    assert_eq!(refused["error"]["code"], "invalid_request", "{refused}");
    // A Responses provider runs it: passed on as it came.
    let (status, answered) =
        call(Method::POST, format!("{}/v1/responses", server.base), &key, Some(body("on-responses"))).await;
    assert_eq!(status, StatusCode::OK, "{answered}");
    assert_eq!(answered["output"][0]["content"][0]["text"], "echo: hi", "{answered}");
}

/// Anthropic's token counting and model listing, as Claude Code uses them: counted by
/// the provider when it speaks Anthropic messages, by sandgate otherwise; Gemini's
/// `countTokens` the same way; `GET /v1/models` in Anthropic's shape when the request
/// carries `anthropic-version`.
#[tokio::test]
async fn tokens_are_counted_and_models_listed_in_each_clients_shape() {
    let (stub, server, key) = serve("counting");
    let count = |model: &str| json!({"model": model, "system": "be brief", "messages": [{"role": "user", "content": "one two three four"}]});
    let post = |path: String, body: Value| {
        let key = key.clone();
        async move {
            let response = client()
                .post(path)
                .header("x-api-key", key)
                .header("anthropic-version", "2023-06-01")
                .json(&body)
                .send()
                .await
                .unwrap();
            (response.status(), response.json::<Value>().await.unwrap())
        }
    };
    // The provider's own count (the stub counts words: 2 + 4).
    let (status, native) = post(format!("{}/v1/messages/count_tokens", server.base), count("on-messages")).await;
    assert_eq!((status, &native), (StatusCode::OK, &json!({"input_tokens": 6})));
    let sent = stub.requests().into_iter().find(|r| r.path == "/v1/messages/count_tokens").expect("passed on");
    assert_eq!(sent.body["model"], "claude-ok", "{:?}", sent.body);
    // sandgate's count for a model of another format: cl100k finds a few more tokens.
    let (status, counted) = post(format!("{}/v1/messages/count_tokens", server.base), count("on-chat")).await;
    assert_eq!(status, StatusCode::OK, "{counted}");
    let tokens = counted["input_tokens"].as_u64().expect("a count");
    assert!((6..=12).contains(&tokens), "{counted}");
    // A model the caller may not use is refused, in Anthropic's shape.
    let (status, refused) = post(format!("{}/v1/messages/count_tokens", server.base), count("nope")).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{refused}");
    assert_eq!(refused["type"], "error", "{refused}");
    // Gemini's countTokens, passed on and counted.
    let gemini = json!({"contents": [{"role": "user", "parts": [{"text": "one two three"}]}]});
    for (model, expect) in [("on-gemini", Some(3)), ("on-messages", None)] {
        let url = format!("{}/v1beta/models/{model}:countTokens?key={key}", server.base);
        let response = client().post(url).json(&gemini).send().await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        let body: Value = response.json().await.unwrap();
        let total = body["totalTokens"].as_u64().expect("a count");
        match expect {
            Some(words) => assert_eq!(total, words, "{body}"),
            None => assert!((3..=6).contains(&total), "{body}"),
        }
    }
    // Model discovery in Anthropic's shape; OpenAI's without the header.
    let response = client()
        .get(format!("{}/v1/models", server.base))
        .header("x-api-key", &key)
        .header("anthropic-version", "2023-06-01")
        .send()
        .await
        .unwrap();
    let listed: Value = response.json().await.unwrap();
    assert_eq!(listed["has_more"], false, "{listed}");
    let first = &listed["data"][0];
    assert_eq!(first["type"], "model", "{listed}");
    assert!(first["display_name"].is_string() && first["created_at"].is_string(), "{listed}");
    assert_eq!(listed["first_id"], first["id"], "{listed}");
    let openai = get_json(&format!("{}/v1/models", server.base), &key);
    assert_eq!(openai["object"], "list", "{openai}");
}

/// A client's own headers (its name, its session) reach the provider, translated or
/// not, unless the caller's policy strips them; the session is recorded either way.
#[tokio::test]
async fn client_headers_reach_providers_unless_a_policy_strips_them() {
    for (label, stripped) in [("public", false), ("private", true)] {
        let (stub, server, key) = serve(label);
        for model in ["on-chat", "on-messages"] {
            let response = client()
                .post(format!("{}/v1/chat/completions", server.base))
                .bearer_auth(&key)
                .header("user-agent", "my-agent/1.0")
                .header("x-app", "cli")
                .header("session-id", "agent-session-1")
                .json(&json!({"model": model, "messages": [{"role": "user", "content": "hi"}]}))
                .send()
                .await
                .unwrap();
            assert_eq!(response.status(), StatusCode::OK);
        }
        let sent = stub.requests();
        assert_eq!(sent.len(), 2);
        for request in sent {
            let expected = if stripped { None } else { Some("my-agent/1.0") };
            assert_eq!(request.user_agent.as_deref(), expected, "{label}: {request:?}");
            assert_eq!(request.session.as_deref(), Some("agent-session-1"), "{label}: {request:?}");
        }
        ledger_rows_within(&server.ledger(), "SELECT id FROM model_calls", 2);
        let sessions = ledger_rows_at(&server.ledger(), "SELECT DISTINCT agent_session FROM model_calls");
        assert_eq!(sessions, vec![vec![json!("agent-session-1")]], "{label}");
    }
}

/// Codex's compaction on a provider that cannot compact: sandgate asks the model for
/// a summary (a recorded call), answers with one `compaction` item whose content only
/// sandgate can read, and opens it into the summary when it comes back, for any
/// provider. `/v1/responses/compact` answers with the new history.
#[tokio::test]
async fn compaction_works_on_every_provider_and_only_sandgate_reads_its_items() {
    let (stub, server, key) = serve("compaction");
    let history = |model: &str, last: Value| {
        json!({"model": model, "stream": true, "store": false, "input": [
            {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "write a parser"}]},
            {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "done, tests pass"}]},
            last,
        ]})
    };
    let post = |path: &str, body: Value| {
        let (url, key) = (format!("{}{path}", server.base), key.clone());
        async move {
            let response = client().post(url).bearer_auth(key).json(&body).send().await.unwrap();
            (response.status(), response.text().await.unwrap())
        }
    };
    // The trigger, streamed, to a chat completions provider.
    let (status, text) = post("/v1/responses", history("on-chat", json!({"type": "compaction_trigger"}))).await;
    assert_eq!(status, StatusCode::OK, "{text}");
    let (items, completed) = responses_items(&text);
    assert_eq!(items.len(), 1, "{text}");
    let item = items[0].clone();
    assert_eq!(item["type"], "compaction", "{text}");
    let sealed = item["encrypted_content"].as_str().expect("sealed content");
    assert!(sealed.starts_with("sgc1."), "{sealed}");
    assert!(!text.contains("Compact this conversation") && !text.contains("echo:"), "nothing readable: {text}");
    assert!(completed["usage"]["input_tokens"].as_u64().unwrap() > 0, "{completed}");
    let summarised = stub.requests().last().cloned().expect("the summary call");
    assert_eq!(summarised.path, "/v1/chat/completions");
    assert!(summarised.body.to_string().contains("Compact this conversation"), "{:?}", summarised.body);
    // The item comes back: opened into the summary for the next provider, whichever.
    let next = json!({"model": "on-messages", "store": false, "input": [
        item,
        {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "go on"}]},
    ]});
    let (status, answer) = post("/v1/responses", next).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    let sent = stub.requests().last().cloned().unwrap();
    let sent = sent.body.to_string();
    assert!(sent.contains("Summary of the conversation so far") && sent.contains("echo: Compact this"), "{sent}");
    assert!(!sent.contains("sgc1."), "{sent}");
    // A sealed item sandgate cannot open is refused, not passed on.
    let forged = json!({"model": "on-chat", "input": [{"type": "compaction", "encrypted_content": "sgc1.AAAA"}]});
    let (status, refused) = post("/v1/responses", forged).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{refused}");
    assert!(refused.contains("SANDGATE_SEAL_SECRET"), "{refused}");
    // The compact endpoint, on a translated provider and on a Responses provider that
    // answered the trigger with text: the user's messages, then the item.
    for model in ["on-gemini", "on-responses"] {
        let body = json!({"model": model, "instructions": "be brief", "input": [
            {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "write a parser"}]},
            {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "done"}]},
        ]});
        let (status, text) = post("/v1/responses/compact", body).await;
        assert_eq!(status, StatusCode::OK, "{model}: {text}");
        let compacted: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(compacted["object"], "response.compaction", "{compacted}");
        let output = compacted["output"].as_array().unwrap();
        assert_eq!(output.len(), 2, "{compacted}");
        assert_eq!(output[0]["role"], "user", "{compacted}");
        assert!(output[1]["encrypted_content"].as_str().unwrap().starts_with("sgc1."), "{compacted}");
    }
    // Every summary was a model call in the ledger.
    let sql = "SELECT id FROM model_calls WHERE user = 'compaction' AND status = 'ok'";
    assert_eq!(ledger_rows_within(&server.ledger(), sql, 4).len(), 4);
}

/// Counting tokens costs sandgate a count (or a provider request): it is one of the
/// caller's model calls per minute.
#[tokio::test]
async fn counting_tokens_takes_the_model_call_rate() {
    let (_stub, server, key) = serve("counted");
    let body = json!({"model": "on-chat", "messages": [{"role": "user", "content": "one two"}]});
    let url = format!("{}/v1/messages/count_tokens", server.base);
    let (status, first) = call(Method::POST, url.clone(), &key, Some(body.clone())).await;
    assert_eq!(status, StatusCode::OK, "{first}");
    let (status, second) = call(Method::POST, url, &key, Some(body)).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{second}");
    assert_eq!(second["error"]["kind"], "rate_limited", "{second}");
}
