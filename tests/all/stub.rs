//! A local stand-in for the paid model providers, speaking their real wire formats.
//!
//! Paid providers cannot be reached from the test machine, so the model proxy is
//! tested against this stub. It serves OpenAI Chat Completions
//! (`POST /v1/chat/completions`, `GET /v1/models`), Anthropic Messages
//! (`POST /v1/messages`, `POST /v1/messages/count_tokens`, and `GET /v1/models` when
//! `anthropic-version` is sent), OpenAI Responses (`POST /v1/responses`) and Gemini
//! (`POST /v1beta/models/{model}:generateContent`, `:streamGenerateContent?alt=sse` and
//! `:countTokens`; these in `stub_wire.rs`) as the real APIs do, down to the error bodies and the
//! server-sent-event framing.
//!
//! What a request gets is chosen by the model name in its body, so one stub serves
//! every test. The name is a base plus optional `+` modifiers, e.g. `gpt-ok+slow200`:
//!
//! | base ends in | answer |
//! | --- | --- |
//! | `-500` | 500 with the provider's server error body |
//! | `-429` | 429 with `retry-after: 1` and the provider's rate-limit body |
//! | `-503` | 503 (OpenAI `server_error`, Anthropic `overloaded_error`) |
//! | `-529` | 529 with Anthropic's `overloaded_error` body (OpenAI shape on that path) |
//! | anything else (`-ok`) | success |
//!
//! | modifier | effect |
//! | --- | --- |
//! | `+slowN` | wait N ms before sending the status and headers |
//! | `+gapN` | N ms between streamed events (default 5) |
//! | `+midstream-fail` | streaming: send the first content chunk, then drop the connection (no `[DONE]` / `message_stop`); non-streaming: send the headers and half the JSON, then drop it |
//! | `+nousage` | OpenAI streaming: no usage chunk even with `stream_options.include_usage` |
//! | `+rerank` | chat completions: the numbered lines (`N. …`) of the last user message, listed in reverse as `{"ranking": [N, …, 1]}` (a reranker that turns the order round) |
//! | `+agent` | an agent's model: when the request offers a tool whose name ends in `execute` and no tool has answered yet, call it with `{"code": "return 6 * 7"}`; once a tool answered (or a summary says it did), reply `DONE: <its answer>`; asked to compact (sandgate's instruction, or Codex's own), reply `SUMMARY: the execute tool answered <the latest answer>` |
//!
//! The reply is `"echo: " + <text of the last user message>`. Tokens are words: input
//! tokens are the whitespace-separated words of every message (and the system prompt),
//! output tokens the words of the reply. `max_tokens` / `max_completion_tokens` below
//! the reply's word count cut the reply to that many words (`finish_reason: "length"`,
//! `stop_reason: "max_tokens"`). [`Stub::reported_usage`] adds up the usage of every
//! successful response whose usage was sent; [`Stub::billed`] adds up what a provider
//! bills: the whole usage of every successful response it began generating, whether
//! or not the client read it (or stayed to the end).
//!
//! Malformed requests get the providers' 400s: a body that is not JSON, no `model`,
//! no `messages`, `max_tokens` below 1, and for Anthropic a missing `max_tokens` or
//! `anthropic-version`. A missing key gets their 401s (no `Authorization: Bearer` for
//! OpenAI; neither `x-api-key` nor `Authorization: Bearer` for Anthropic, whose 2.x
//! Python SDK sends the key as a bearer token); any key value is accepted.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri};
use axum::response::Response;
use axum::routing::{get, post};
use axum::Router;
use serde_json::{json, Value};

#[path = "stub_wire.rs"]
mod wire;

/// One request the stub received.
#[derive(Clone, Debug)]
pub struct StubRequest {
    pub path: String,
    /// The JSON body; `Null` when there was none, a string when it was not JSON.
    pub body: Value,
    pub authorization: Option<String>,
    pub x_api_key: Option<String>,
    pub anthropic_version: Option<String>,
    /// The W3C trace context the caller passed on.
    pub traceparent: Option<String>,
    /// The client's own headers sandgate passes on.
    pub user_agent: Option<String>,
    pub anthropic_beta: Option<String>,
    pub session: Option<String>,
}

#[derive(Default)]
struct Recorded {
    requests: Vec<StubRequest>,
    /// Requests waiting out their `+slowMS` now, and the most there ever were.
    in_flight: usize,
    peak_in_flight: usize,
    usage: BTreeMap<String, (u64, u64)>,
    billed: BTreeMap<String, (u64, u64)>,
}

type Shared = Arc<Mutex<Recorded>>;

/// A running stub; see the module documentation.
pub struct Stub {
    pub addr: SocketAddr,
    /// `http://127.0.0.1:PORT`, without a path.
    pub base: String,
    state: Shared,
    shutdown: Mutex<Option<tokio::sync::oneshot::Sender<()>>>,
}

impl Stub {
    /// Starts the stub on an ephemeral loopback port, on its own runtime thread, so it
    /// outlives the runtime of any one test.
    pub fn start() -> Stub {
        let state = Shared::default();
        let (addr_tx, addr_rx) = std::sync::mpsc::channel();
        let (shutdown_tx, shutdown_rx) = tokio::sync::oneshot::channel::<()>();
        let app = router(state.clone());
        std::thread::Builder::new()
            .name("model-stub".into())
            .spawn(move || {
                let runtime =
                    tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
                runtime.block_on(async move {
                    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
                    addr_tx.send(listener.local_addr().unwrap()).unwrap();
                    axum::serve(listener, app)
                        .with_graceful_shutdown(async move {
                            let _ = shutdown_rx.await;
                        })
                        .await
                        .unwrap();
                });
            })
            .unwrap();
        let addr = addr_rx.recv().expect("stub started");
        Stub { addr, base: format!("http://{addr}"), state, shutdown: Mutex::new(Some(shutdown_tx)) }
    }

    /// Configuration for an OpenAI-kind provider on this stub (its key read from
    /// `key_env`) and `models` on it, each `(name, upstream, tier)` at 0.15 USD per
    /// million input tokens and 0.60 per million output.
    pub fn openai_config(&self, key_env: &str, models: &[(&str, &str, &str)]) -> String {
        let mut config = format!(
            "[providers.openai]\nkind = \"openai\"\nbase_url = \"{}/v1\"\napi_key_env = \"{key_env}\"\n",
            self.base
        );
        for (name, upstream, tier) in models {
            config.push_str(&format!(
                "\n[models.{name}]\nprovider = \"openai\"\nupstream = \"{upstream}\"\ntier = \"{tier}\"\n\
                 input_per_mtok = 0.15\noutput_per_mtok = 0.6\n"
            ));
        }
        config
    }

    /// Every request received, in order of arrival.
    pub fn requests(&self) -> Vec<StubRequest> {
        self.state.lock().unwrap().requests.clone()
    }

    /// Input and output tokens reported in successful responses, per model name as
    /// the request gave it (modifiers included).
    pub fn reported_usage(&self) -> BTreeMap<String, (u64, u64)> {
        self.state.lock().unwrap().usage.clone()
    }

    /// Input and output tokens billed, per model name as the request gave it: every
    /// successful response counts in full once it begins, read or not.
    pub fn billed(&self) -> BTreeMap<String, (u64, u64)> {
        self.state.lock().unwrap().billed.clone()
    }

    /// The most requests that were ever waiting out their `+slowMS` at once.
    pub fn peak_in_flight(&self) -> usize {
        self.state.lock().unwrap().peak_in_flight
    }

    pub fn reset(&self) {
        let mut state = self.state.lock().unwrap();
        state.requests.clear();
        state.usage.clear();
        state.billed.clear();
    }
}

impl Drop for Stub {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.lock().unwrap().take() {
            let _ = tx.send(());
        }
    }
}

fn router(state: Shared) -> Router {
    Router::new()
        .route("/v1/chat/completions", post(openai_chat))
        .route("/v1/messages", post(anthropic_messages))
        .route("/v1/messages/count_tokens", post(wire::messages_count))
        .route("/v1/responses", post(wire::responses))
        .route("/v1beta/models/{target}", post(wire::gemini))
        .route("/v1/models", get(models))
        .fallback(not_found)
        .with_state(state)
        // Providers take requests far larger than axum's default of 2 MB.
        .layer(axum::extract::DefaultBodyLimit::max(64 << 20))
}

// ---------------------------------------------------------------------------------
// Requests

#[derive(Clone, Copy, PartialEq)]
enum Provider {
    OpenAi,
    Anthropic,
    Gemini,
}

/// What the model name asks for.
struct Behaviour {
    error: Option<u16>,
    slow_ms: u64,
    gap_ms: u64,
    midstream_fail: bool,
    no_usage: bool,
    /// `+agent`: call the `execute` tool when one is offered, then answer with its result.
    agent: bool,
    /// `+rerank`: answer with the numbered lines of the request in reverse.
    rerank: bool,
}

impl Behaviour {
    fn of(model: &str) -> Behaviour {
        let mut parts = model.split('+');
        let base = parts.next().unwrap_or("");
        let error = ["500", "429", "503", "529"]
            .iter()
            .find(|code| base.ends_with(&format!("-{code}")))
            .map(|code| code.parse().unwrap());
        let mut behaviour = Behaviour {
            error,
            slow_ms: 0,
            gap_ms: 5,
            midstream_fail: false,
            no_usage: false,
            agent: false,
            rerank: false,
        };
        for modifier in parts {
            if let Some(ms) = modifier.strip_prefix("slow").and_then(|n| n.parse().ok()) {
                behaviour.slow_ms = ms;
            } else if let Some(ms) = modifier.strip_prefix("gap").and_then(|n| n.parse().ok()) {
                behaviour.gap_ms = ms;
            } else if modifier == "midstream-fail" {
                behaviour.midstream_fail = true;
            } else if modifier == "nousage" {
                behaviour.no_usage = true;
            } else if modifier == "agent" {
                behaviour.agent = true;
            } else if modifier == "rerank" {
                behaviour.rerank = true;
            }
        }
        behaviour
    }
}

fn header(headers: &HeaderMap, name: &str) -> Option<String> {
    headers.get(name).map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
}

/// Records the request and returns its body as JSON, or the text that failed to parse.
fn record(state: &Shared, path: &str, headers: &HeaderMap, body: &Bytes) -> Result<Value, String> {
    let parsed = if body.is_empty() {
        Ok(Value::Null)
    } else {
        serde_json::from_slice::<Value>(body).map_err(|e| e.to_string())
    };
    let stored = match &parsed {
        Ok(value) => value.clone(),
        Err(_) => Value::String(String::from_utf8_lossy(body).into_owned()),
    };
    state.lock().unwrap().requests.push(StubRequest {
        path: path.to_string(),
        body: stored,
        authorization: header(headers, "authorization"),
        x_api_key: header(headers, "x-api-key"),
        anthropic_version: header(headers, "anthropic-version"),
        traceparent: header(headers, "traceparent"),
        user_agent: header(headers, "user-agent"),
        anthropic_beta: header(headers, "anthropic-beta"),
        session: header(headers, "x-claude-code-session-id").or_else(|| header(headers, "session-id")),
    });
    parsed
}

fn bill(state: &Shared, model: &str, reply: &Reply) {
    let mut state = state.lock().unwrap();
    let entry = state.billed.entry(model.to_string()).or_default();
    entry.0 += reply.input_tokens;
    entry.1 += reply.output_tokens;
}

fn add_usage(state: &Shared, model: &str, input: u64, output: u64) {
    let mut state = state.lock().unwrap();
    let entry = state.usage.entry(model.to_string()).or_default();
    entry.0 += input;
    entry.1 += output;
}

/// The text of a message's `content`: a string, or the text blocks / parts of an array.
fn content_text(content: &Value) -> String {
    match content {
        Value::String(text) => text.clone(),
        Value::Array(blocks) => blocks
            .iter()
            .filter(|block| block["type"] == "text")
            .filter_map(|block| block["text"].as_str())
            .collect::<Vec<_>>()
            .join(" "),
        _ => String::new(),
    }
}

fn words(text: &str) -> u64 {
    text.split_whitespace().count() as u64
}

/// The byte offsets at which each whitespace-separated word of `text` starts and ends.
fn word_spans(text: &str) -> Vec<(usize, usize)> {
    let mut spans = Vec::new();
    let mut start = None;
    for (i, c) in text.char_indices() {
        match (c.is_whitespace(), start) {
            (false, None) => start = Some(i),
            (true, Some(s)) => {
                spans.push((s, i));
                start = None;
            }
            _ => {}
        }
    }
    if let Some(s) = start {
        spans.push((s, text.len()));
    }
    spans
}

/// Splits `text` into pieces of about three words that concatenate back to `text`.
fn chunks(text: &str) -> Vec<String> {
    let spans = word_spans(text);
    let mut cuts: Vec<usize> = spans.iter().step_by(3).skip(1).map(|(start, _)| *start).collect();
    cuts.insert(0, 0);
    cuts.push(text.len());
    cuts.windows(2).map(|w| text[w[0]..w[1]].to_string()).filter(|s| !s.is_empty()).collect()
}

/// What the model says: the reply text, its token count and whether it was cut short.
struct Reply {
    text: String,
    input_tokens: u64,
    output_tokens: u64,
    truncated: bool,
}

fn reply(last_user_text: &str, input_tokens: u64, max_tokens: Option<u64>) -> Reply {
    let mut text = format!("echo: {last_user_text}");
    let spans = word_spans(&text);
    let mut truncated = false;
    if let Some(max) = max_tokens {
        if (max as usize) < spans.len() {
            text.truncate(spans[max as usize - 1].1);
            truncated = true;
        }
    }
    let output_tokens = words(&text);
    Reply { text, input_tokens, output_tokens, truncated }
}

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs()
}

fn id() -> String {
    uuid::Uuid::now_v7().simple().to_string()
}

// ---------------------------------------------------------------------------------
// Responses

fn json_response(status: u16, body: &Value, provider: Provider) -> Response {
    let mut response = Response::new(Body::from(body.to_string()));
    *response.status_mut() = StatusCode::from_u16(status).unwrap();
    let headers = response.headers_mut();
    headers.insert("content-type", HeaderValue::from_static("application/json"));
    add_request_id(headers, provider);
    response
}

fn add_request_id(headers: &mut HeaderMap, provider: Provider) {
    let (name, value) = match provider {
        Provider::OpenAi => ("x-request-id", format!("req_{}", id())),
        Provider::Anthropic => ("request-id", format!("req_{}", id())),
        Provider::Gemini => ("x-goog-request-id", id()),
    };
    headers.insert(name, HeaderValue::from_str(&value).unwrap());
}

fn error_response(provider: Provider, status: u16, kind: &str, message: &str) -> Response {
    let body = match provider {
        Provider::OpenAi => json!({"error": {"message": message, "type": kind, "param": null, "code": null}}),
        Provider::Anthropic => json!({"type": "error", "error": {"type": kind, "message": message}}),
        Provider::Gemini => json!({"error": {"code": status, "message": message, "status": kind}}),
    };
    let mut response = json_response(status, &body, provider);
    if status == 429 {
        response.headers_mut().insert("retry-after", HeaderValue::from_static("1"));
    }
    if provider == Provider::Anthropic && status >= 500 {
        response.headers_mut().insert("x-should-retry", HeaderValue::from_static("true"));
    }
    response
}

fn invalid(provider: Provider, message: &str) -> Response {
    error_response(provider, 400, "invalid_request_error", message)
}

/// The error the model name asks for.
fn scripted_error(provider: Provider, status: u16) -> Response {
    match (provider, status) {
        (Provider::OpenAi, 429) => error_response(
            provider,
            429,
            "rate_limit_error",
            "Rate limit reached for requests per min (RPM): Limit 3, Used 3, Requested 1. Please try again in 1s.",
        ),
        (Provider::OpenAi, 503) => {
            error_response(provider, 503, "server_error", "The server is overloaded or not ready yet.")
        }
        (Provider::OpenAi, _) => error_response(
            provider,
            status,
            "server_error",
            "The server had an error while processing your request. Sorry about that!",
        ),
        (Provider::Anthropic, 429) => error_response(
            provider,
            429,
            "rate_limit_error",
            "This request would exceed the rate limit for your organization of 5 requests per minute.",
        ),
        (Provider::Anthropic, 503 | 529) => error_response(provider, status, "overloaded_error", "Overloaded"),
        (Provider::Anthropic, _) => error_response(provider, status, "api_error", "Internal server error"),
        (Provider::Gemini, 429) => {
            error_response(provider, 429, "RESOURCE_EXHAUSTED", "Resource has been exhausted (e.g. check quota).")
        }
        (Provider::Gemini, 503 | 529) => {
            error_response(provider, 503, "UNAVAILABLE", "The model is overloaded. Please try again later.")
        }
        (Provider::Gemini, _) => error_response(provider, status, "INTERNAL", "An internal error has occurred."),
    }
}

/// A streamed body fed by a task; `Err` drops the connection without ending the
/// chunked body, as a provider that fails mid-stream does.
struct Events {
    tx: tokio::sync::mpsc::Sender<Result<Bytes, std::io::Error>>,
    gap: Duration,
}

impl Events {
    fn new(gap_ms: u64) -> (Events, Body) {
        let (tx, rx) = tokio::sync::mpsc::channel(1);
        let body = Body::from_stream(tokio_stream::wrappers::ReceiverStream::new(rx));
        (Events { tx, gap: Duration::from_millis(gap_ms) }, body)
    }

    /// Sends one event after the gap; false once the client has gone.
    async fn send(&self, text: String) -> bool {
        tokio::time::sleep(self.gap).await;
        self.tx.send(Ok(Bytes::from(text))).await.is_ok()
    }

    async fn data(&self, data: &Value) -> bool {
        self.send(format!("data: {data}\n\n")).await
    }

    async fn named(&self, event: &str, data: &Value) -> bool {
        self.send(format!("event: {event}\ndata: {data}\n\n")).await
    }

    async fn abort(self) {
        tokio::time::sleep(self.gap).await;
        let _ = self.tx.send(Err(std::io::Error::other("stub: midstream-fail"))).await;
    }
}

fn sse_response(body: Body, provider: Provider) -> Response {
    let mut response = Response::new(body);
    let headers = response.headers_mut();
    headers.insert("content-type", HeaderValue::from_static("text/event-stream; charset=utf-8"));
    headers.insert("cache-control", HeaderValue::from_static("no-cache"));
    add_request_id(headers, provider);
    response
}

/// A 200 whose JSON body stops halfway and whose connection is then dropped.
fn broken_json_response(body: &Value, provider: Provider) -> Response {
    let text = body.to_string();
    let half = Bytes::from(text[..text.len() / 2].to_string());
    let (events, stream) = Events::new(5);
    tokio::spawn(async move {
        if events.tx.send(Ok(half)).await.is_ok() {
            events.abort().await;
        }
    });
    let mut response = Response::new(stream);
    response.headers_mut().insert("content-type", HeaderValue::from_static("application/json"));
    add_request_id(response.headers_mut(), provider);
    response
}

/// Reads `max_tokens` / `max_completion_tokens`: `Ok(None)` when absent.
fn max_tokens(body: &Value, provider: Provider) -> Result<Option<u64>, String> {
    let value = match provider {
        Provider::OpenAi if !body["max_completion_tokens"].is_null() => &body["max_completion_tokens"],
        _ => &body["max_tokens"],
    };
    if value.is_null() {
        return Ok(None);
    }
    match value.as_u64() {
        Some(n) if n >= 1 => Ok(Some(n)),
        _ => Err(format!("max_tokens: must be an integer of at least 1, got {value}")),
    }
}

/// Waits `ms`, counted as in flight meanwhile.
async fn slow(state: &Shared, ms: u64) {
    {
        let mut recorded = state.lock().unwrap();
        recorded.in_flight += 1;
        recorded.peak_in_flight = recorded.peak_in_flight.max(recorded.in_flight);
    }
    tokio::time::sleep(Duration::from_millis(ms)).await;
    state.lock().unwrap().in_flight -= 1;
}

// ---------------------------------------------------------------------------------
// OpenAI

async fn openai_chat(State(state): State<Shared>, headers: HeaderMap, body: Bytes) -> Response {
    let provider = Provider::OpenAi;
    let body = match record(&state, "/v1/chat/completions", &headers, &body) {
        Ok(body) => body,
        Err(e) => return invalid(provider, &format!("We could not parse the JSON body of your request. (HINT: {e})")),
    };
    let Some(model) = body["model"].as_str().map(str::to_string) else {
        return invalid(provider, "you must provide a model parameter");
    };
    let behaviour = Behaviour::of(&model);
    slow(&state, behaviour.slow_ms).await;
    if !header(&headers, "authorization").is_some_and(|v| v.starts_with("Bearer ") && v.len() > 7) {
        return error_response(
            provider,
            401,
            "invalid_request_error",
            "You didn't provide an API key. You need to provide your API key in an Authorization header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY).",
        );
    }
    let Some(messages) = body["messages"].as_array() else {
        return invalid(provider, "Missing required parameter: 'messages'.");
    };
    let max_tokens = match max_tokens(&body, provider) {
        Ok(n) => n,
        Err(message) => return invalid(provider, &message),
    };
    if let Some(status) = behaviour.error {
        return scripted_error(provider, status);
    }
    if let Some(response) = wire::chat_agent(&state, &body, &model, &behaviour) {
        return response;
    }
    let input_tokens = messages.iter().map(|m| words(&content_text(&m["content"]))).sum();
    let last_user = messages.iter().rev().find(|m| m["role"] == "user").map(|m| content_text(&m["content"]));
    let mut reply = reply(&last_user.clone().unwrap_or_default(), input_tokens, max_tokens);
    if behaviour.rerank {
        let numbered = last_user
            .unwrap_or_default()
            .lines()
            .filter_map(|line| line.split_once(". ").and_then(|(n, _)| n.parse::<u32>().ok()))
            .collect::<Vec<_>>();
        let ranking: Vec<u32> = numbered.into_iter().rev().collect();
        reply.text = json!({ "ranking": ranking }).to_string();
        reply.output_tokens = words(&reply.text);
    }
    bill(&state, &model, &reply);
    let finish_reason = if reply.truncated { "length" } else { "stop" };
    let id = format!("chatcmpl-{}", id());
    let created = now();
    let usage = json!({
        "prompt_tokens": reply.input_tokens,
        "completion_tokens": reply.output_tokens,
        "total_tokens": reply.input_tokens + reply.output_tokens,
        "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
        "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0, "accepted_prediction_tokens": 0, "rejected_prediction_tokens": 0},
    });

    if body["stream"] != true {
        let response = json!({
            "id": id,
            "object": "chat.completion",
            "created": created,
            "model": model,
            "choices": [{
                "index": 0,
                "message": {"role": "assistant", "content": reply.text, "refusal": null, "annotations": []},
                "logprobs": null,
                "finish_reason": finish_reason,
            }],
            "usage": usage,
            "service_tier": "default",
            "system_fingerprint": "fp_stub",
        });
        if behaviour.midstream_fail {
            return broken_json_response(&response, provider);
        }
        add_usage(&state, &model, reply.input_tokens, reply.output_tokens);
        return json_response(200, &response, provider);
    }

    let include_usage = body["stream_options"]["include_usage"] == true;
    let (events, stream) = Events::new(behaviour.gap_ms);
    tokio::spawn(async move {
        let chunk = |choices: Value| {
            let mut chunk = json!({
                "id": id,
                "object": "chat.completion.chunk",
                "created": created,
                "model": model,
                "service_tier": "default",
                "system_fingerprint": "fp_stub",
                "choices": choices,
            });
            if include_usage {
                chunk["usage"] = Value::Null;
            }
            chunk
        };
        let delta = |delta: Value, finish_reason: Value| {
            chunk(json!([{"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish_reason}]))
        };
        if !events.data(&delta(json!({"role": "assistant", "content": "", "refusal": null}), Value::Null)).await {
            return;
        }
        for piece in chunks(&reply.text) {
            if !events.data(&delta(json!({"content": piece}), Value::Null)).await {
                return;
            }
            if behaviour.midstream_fail {
                events.abort().await;
                return;
            }
        }
        if !events.data(&delta(json!({}), json!(finish_reason))).await {
            return;
        }
        if include_usage && !behaviour.no_usage {
            let mut last = chunk(json!([]));
            last["usage"] = usage;
            if !events.data(&last).await {
                return;
            }
            add_usage(&state, &model, reply.input_tokens, reply.output_tokens);
        }
        events.send("data: [DONE]\n\n".to_string()).await;
    });
    sse_response(stream, provider)
}

// ---------------------------------------------------------------------------------
// Anthropic

async fn anthropic_messages(State(state): State<Shared>, headers: HeaderMap, body: Bytes) -> Response {
    let provider = Provider::Anthropic;
    let body = match record(&state, "/v1/messages", &headers, &body) {
        Ok(body) => body,
        Err(e) => return invalid(provider, &format!("There was an error parsing the body: {e}")),
    };
    let model = body["model"].as_str().map(str::to_string);
    let behaviour = Behaviour::of(model.as_deref().unwrap_or(""));
    slow(&state, behaviour.slow_ms).await;
    // Anthropic's SDKs sent the key as `x-api-key` until 2025; later ones (2.x) send
    // `Authorization: Bearer`, which the API accepts too.
    let bearer = header(&headers, "authorization").is_some_and(|v| v.starts_with("Bearer ") && v.len() > 7);
    if !bearer && header(&headers, "x-api-key").is_none_or(|key| key.is_empty()) {
        return error_response(provider, 401, "authentication_error", "x-api-key header is required");
    }
    if header(&headers, "anthropic-version").is_none() {
        return invalid(provider, "anthropic-version: header is required");
    }
    let Some(model) = model else {
        return invalid(provider, "model: Field required");
    };
    let Some(messages) = body["messages"].as_array() else {
        return invalid(provider, "messages: Field required");
    };
    let max_tokens = match max_tokens(&body, provider) {
        Ok(Some(n)) => n,
        Ok(None) => return invalid(provider, "max_tokens: Field required"),
        Err(message) => return invalid(provider, &message),
    };
    if let Some(status) = behaviour.error {
        return scripted_error(provider, status);
    }
    if let Some(response) = wire::messages_agent(&state, &body, &model, &behaviour) {
        return response;
    }
    let input_tokens = words(&content_text(&body["system"]))
        + messages.iter().map(|m| words(&content_text(&m["content"]))).sum::<u64>();
    let last_user = messages.iter().rev().find(|m| m["role"] == "user").map(|m| content_text(&m["content"]));
    let reply = reply(&last_user.unwrap_or_default(), input_tokens, Some(max_tokens));
    bill(&state, &model, &reply);
    let stop_reason = if reply.truncated { "max_tokens" } else { "end_turn" };
    let id = format!("msg_{}", id());

    if body["stream"] != true {
        let response = json!({
            "id": id,
            "type": "message",
            "role": "assistant",
            "model": model,
            "content": [{"type": "text", "text": reply.text}],
            "stop_reason": stop_reason,
            "stop_sequence": null,
            "usage": {
                "input_tokens": reply.input_tokens,
                "output_tokens": reply.output_tokens,
                "cache_creation_input_tokens": 0,
                "cache_read_input_tokens": 0,
                "service_tier": "standard",
            },
        });
        if behaviour.midstream_fail {
            return broken_json_response(&response, provider);
        }
        add_usage(&state, &model, reply.input_tokens, reply.output_tokens);
        return json_response(200, &response, provider);
    }

    let (events, stream) = Events::new(behaviour.gap_ms);
    tokio::spawn(async move {
        let start = json!({
            "type": "message_start",
            "message": {
                "id": id,
                "type": "message",
                "role": "assistant",
                "model": model,
                "content": [],
                "stop_reason": null,
                "stop_sequence": null,
                "usage": {
                    "input_tokens": reply.input_tokens,
                    "output_tokens": 1,
                    "cache_creation_input_tokens": 0,
                    "cache_read_input_tokens": 0,
                    "service_tier": "standard",
                },
            },
        });
        let opening = [
            ("message_start", start),
            (
                "content_block_start",
                json!({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}),
            ),
            ("ping", json!({"type": "ping"})),
        ];
        for (event, data) in &opening {
            if !events.named(event, data).await {
                return;
            }
        }
        for piece in chunks(&reply.text) {
            let delta =
                json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": piece}});
            if !events.named("content_block_delta", &delta).await {
                return;
            }
            if behaviour.midstream_fail {
                events.abort().await;
                return;
            }
        }
        if !events.named("content_block_stop", &json!({"type": "content_block_stop", "index": 0})).await {
            return;
        }
        let delta = json!({
            "type": "message_delta",
            "delta": {"stop_reason": stop_reason, "stop_sequence": null},
            "usage": {"output_tokens": reply.output_tokens},
        });
        if !events.named("message_delta", &delta).await {
            return;
        }
        add_usage(&state, &model, reply.input_tokens, reply.output_tokens);
        events.named("message_stop", &json!({"type": "message_stop"})).await;
    });
    sse_response(stream, provider)
}

// ---------------------------------------------------------------------------------
// Model lists and unknown paths

const MODELS: [&str; 4] = ["stub-ok", "stub-500", "stub-429", "stub-503"];

async fn models(State(state): State<Shared>, headers: HeaderMap) -> Response {
    let _ = record(&state, "/v1/models", &headers, &Bytes::new());
    if header(&headers, "anthropic-version").is_some() {
        let data: Vec<Value> = MODELS
            .iter()
            .map(|m| json!({"type": "model", "id": m, "display_name": m, "created_at": "2025-01-01T00:00:00Z"}))
            .collect();
        let body = json!({"data": data, "has_more": false, "first_id": MODELS[0], "last_id": MODELS[MODELS.len() - 1]});
        return json_response(200, &body, Provider::Anthropic);
    }
    let data: Vec<Value> = MODELS
        .iter()
        .map(|m| json!({"id": m, "object": "model", "created": 1_700_000_000, "owned_by": "stub"}))
        .collect();
    json_response(200, &json!({"object": "list", "data": data}), Provider::OpenAi)
}

async fn not_found(State(state): State<Shared>, method: Method, uri: Uri, headers: HeaderMap, body: Bytes) -> Response {
    let _ = record(&state, uri.path(), &headers, &body);
    let message = format!("Invalid URL ({method} {})", uri.path());
    if header(&headers, "anthropic-version").is_some() {
        error_response(Provider::Anthropic, 404, "not_found_error", &message)
    } else {
        error_response(Provider::OpenAi, 404, "invalid_request_error", &message)
    }
}

// ---------------------------------------------------------------------------------
// The stub against the official SDKs

/// Fails unless `python3` can import both official SDKs.
pub fn require_python_sdks() {
    require_python_module("openai, anthropic", "openai anthropic");
}

/// Panics with the install command unless python3 can import `modules`.
pub fn require_python_module(modules: &str, packages: &str) {
    let output = std::process::Command::new("python3").args(["-c", &format!("import {modules}")]).output();
    match output {
        Ok(output) if output.status.success() => {}
        Ok(output) => panic!(
            "python3 cannot import {modules}; run: pip install {packages}\n{}",
            String::from_utf8_lossy(&output.stderr)
        ),
        Err(e) => panic!("cannot run python3 ({e}); install Python 3, then: pip install {packages}"),
    }
}

/// Runs `tests/python/<script>` with `args` and returns the JSON line it printed.
pub fn python_client(script: &str, args: &[&str]) -> Value {
    let path = format!("{}/tests/python/{script}", env!("CARGO_MANIFEST_DIR"));
    let output = std::process::Command::new("python3")
        .arg(&path)
        .args(args)
        .env("NO_PROXY", "127.0.0.1,localhost")
        .env("no_proxy", "127.0.0.1,localhost")
        .output()
        .expect("python3 runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{script} {args:?} failed ({}):\n{stdout}\n{stderr}", output.status);
    let line = stdout.lines().last().unwrap_or_default();
    serde_json::from_str(line)
        .unwrap_or_else(|e| panic!("{script} {args:?} printed no JSON line ({e}):\n{stdout}\n{stderr}"))
}

#[test]
fn stub_speaks_the_real_sdk_formats() {
    require_python_sdks();
    let stub = Stub::start();
    assert!(stub.addr.ip().is_loopback() && stub.base.ends_with(&format!(":{}", stub.addr.port())));
    let openai_base = format!("{}/v1", stub.base);
    let anthropic_base = stub.base.clone();

    // (script, base, model, message, extra args)
    let cases: Vec<(&str, &str, &str, &str, Vec<&str>)> = vec![
        ("openai_client.py", &openai_base, "gpt-ok", "hello there stub", vec![]),
        ("openai_client.py", &openai_base, "gpt-stream-ok", "one two three four five six seven", vec!["--stream"]),
        ("openai_client.py", &openai_base, "gpt-500", "hi", vec![]),
        ("openai_client.py", &openai_base, "gpt-429", "hi", vec!["--stream"]),
        ("openai_client.py", &openai_base, "gpt-ok+midstream-fail", "a b c d e f g h", vec!["--stream"]),
        (
            "openai_client.py",
            &openai_base,
            "gpt-short-ok",
            "a b c d e f g h",
            vec!["--max-tokens", "3", "--user", "u1"],
        ),
        ("anthropic_client.py", &anthropic_base, "claude-ok", "hello there stub", vec![]),
        (
            "anthropic_client.py",
            &anthropic_base,
            "claude-stream-ok",
            "one two three four five six seven",
            vec!["--stream"],
        ),
        ("anthropic_client.py", &anthropic_base, "claude-500", "hi", vec![]),
        ("anthropic_client.py", &anthropic_base, "claude-429", "hi", vec!["--stream"]),
        ("anthropic_client.py", &anthropic_base, "claude-ok+midstream-fail", "a b c d e f g h", vec!["--stream"]),
        (
            "anthropic_client.py",
            &anthropic_base,
            "claude-short-ok",
            "a b c d e f g h",
            vec!["--stream", "--max-tokens", "4"],
        ),
    ];
    // Each SDK takes seconds to import: run the clients two at a time.
    let results: Vec<Value> = std::thread::scope(|scope| {
        let mut results = Vec::new();
        for pair in cases.chunks(2) {
            let handles: Vec<_> = pair
                .iter()
                .map(|(script, base, model, message, extra)| {
                    scope.spawn(move || {
                        let mut args =
                            vec!["--base-url", base, "--api-key", "sk-test", "--model", model, "--message", message];
                        args.extend(extra.iter().copied());
                        python_client(script, &args)
                    })
                })
                .collect();
            results.extend(handles.into_iter().map(|h| h.join().unwrap()));
        }
        results
    });
    for ((script, _, model, _, extra), result) in cases.iter().zip(&results) {
        println!("{script} {model} {extra:?}: {result}");
    }
    let [o_ok, o_stream, o_500, o_429, o_mid, o_short, a_ok, a_stream, a_500, a_429, a_mid, a_short] =
        <[Value; 12]>::try_from(results).unwrap();

    let ok = |text: &str, model: &str, input: u64, output: u64, finish: &str| json!({"ok": true, "text": text, "model": model, "usage": {"input": input, "output": output}, "finish_reason": finish});
    assert_eq!(o_ok, ok("echo: hello there stub", "gpt-ok", 3, 4, "stop"));
    assert_eq!(o_stream, ok("echo: one two three four five six seven", "gpt-stream-ok", 7, 8, "stop"));
    assert_eq!(o_short, ok("echo: a b", "gpt-short-ok", 8, 3, "length"));
    assert_eq!(a_ok, ok("echo: hello there stub", "claude-ok", 3, 4, "end_turn"));
    assert_eq!(a_stream, ok("echo: one two three four five six seven", "claude-stream-ok", 7, 8, "end_turn"));
    assert_eq!(a_short, ok("echo: a b c", "claude-short-ok", 8, 4, "max_tokens"));

    let failed = |result: &Value, status: Value, error_type: &str| {
        assert_eq!(result["ok"], false, "{result}");
        assert_eq!(result["status"], status, "{result}");
        assert_eq!(result["error_type"], error_type, "{result}");
    };
    failed(&o_500, json!(500), "InternalServerError");
    assert!(o_500["error"].as_str().unwrap().contains("server had an error"), "{o_500}");
    failed(&o_429, json!(429), "RateLimitError");
    assert!(o_429["error"].as_str().unwrap().contains("Rate limit reached"), "{o_429}");
    failed(&a_500, json!(500), "InternalServerError");
    assert!(a_500["error"].as_str().unwrap().contains("api_error"), "{a_500}");
    failed(&a_429, json!(429), "RateLimitError");
    assert!(a_429["error"].as_str().unwrap().contains("rate_limit_error"), "{a_429}");
    // A connection dropped after the first chunk: the SDKs saw that chunk, then failed.
    failed(&o_mid, Value::Null, "APIConnectionError");
    assert_eq!(o_mid["partial_text"], "echo: a b ", "{o_mid}");
    assert_eq!(a_mid["ok"], false, "{a_mid}");
    assert_eq!(a_mid["partial_text"], "echo: a b ", "{a_mid}");

    // Usage is counted only where a successful response carried it.
    let expected: BTreeMap<String, (u64, u64)> = [
        ("gpt-ok", (3, 4)),
        ("gpt-stream-ok", (7, 8)),
        ("gpt-short-ok", (8, 3)),
        ("claude-ok", (3, 4)),
        ("claude-stream-ok", (7, 8)),
        ("claude-short-ok", (8, 4)),
    ]
    .into_iter()
    .map(|(model, usage)| (model.to_string(), usage))
    .collect();
    assert_eq!(stub.reported_usage(), expected);

    // What the SDKs sent.
    let requests = stub.requests();
    assert_eq!(requests.len(), 12, "{requests:?}");
    for request in &requests {
        let model = request.body["model"].as_str().unwrap();
        if model.starts_with("gpt") {
            assert_eq!(request.path, "/v1/chat/completions");
            assert_eq!(request.authorization.as_deref(), Some("Bearer sk-test"));
        } else {
            assert_eq!(request.path, "/v1/messages");
            // Older SDKs send `x-api-key`, 2.x ones `Authorization: Bearer`.
            assert!(
                request.x_api_key.as_deref() == Some("sk-test")
                    || request.authorization.as_deref() == Some("Bearer sk-test"),
                "{request:?}"
            );
            assert!(request.anthropic_version.is_some(), "{request:?}");
        }
    }
    let streamed = requests.iter().find(|r| r.body["model"] == "gpt-stream-ok").unwrap();
    assert_eq!(streamed.body["stream"], true);
    assert_eq!(streamed.body["stream_options"]["include_usage"], true);
    let short = requests.iter().find(|r| r.body["model"] == "gpt-short-ok").unwrap();
    assert_eq!((&short.body["max_tokens"], &short.body["user"]), (&json!(3), &json!("u1")));

    stub.reset();
    assert!(stub.requests().is_empty() && stub.reported_usage().is_empty());
}

/// Reads a whole response: status, headers and body text.
async fn exchange(request: reqwest::RequestBuilder) -> (u16, reqwest::header::HeaderMap, String) {
    let response = request.send().await.expect("stub answers");
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    (status, headers, response.text().await.unwrap_or_default())
}

/// The `data:` payloads of an SSE body, as JSON where they are JSON.
fn sse_data(text: &str) -> Vec<Value> {
    text.split("\n\n")
        .filter_map(|event| event.lines().find_map(|line| line.strip_prefix("data: ")))
        .map(|data| serde_json::from_str(data).unwrap_or_else(|_| Value::String(data.to_string())))
        .collect()
}

#[test]
fn stub_modifiers_and_validation() {
    let stub = Stub::start();
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    runtime.block_on(async {
        sandgate::install_crypto_provider();
        let client = reqwest::Client::new();
        let chat = |body: Value| {
            client.post(format!("{}/v1/chat/completions", stub.base)).bearer_auth("sk-test").json(&body)
        };
        let messages = || {
            client
                .post(format!("{}/v1/messages", stub.base))
                .header("x-api-key", "sk-test")
                .header("anthropic-version", "2023-06-01")
        };
        let user = json!([{"role": "system", "content": "be brief"}, {"role": "user", "content": "a b c d"}]);

        // +nousage: the stream ends properly but carries no usage, and none is counted.
        let (status, headers, text) =
            exchange(chat(json!({"model": "gpt-ok+nousage", "messages": user, "stream": true, "stream_options": {"include_usage": true}})))
                .await;
        assert_eq!(status, 200);
        assert!(headers["content-type"].to_str().unwrap().starts_with("text/event-stream"));
        let events = sse_data(&text);
        assert_eq!(events.last().unwrap(), "[DONE]");
        assert!(events.iter().all(|e| e.get("usage").is_none_or(Value::is_null)), "{text}");
        assert!(stub.reported_usage().is_empty());

        // Without include_usage there is no usage chunk either; with it, it comes last.
        let (_, _, text) = exchange(chat(json!({"model": "gpt-ok", "messages": user, "stream": true}))).await;
        assert!(!text.contains("usage"), "{text}");
        let (_, _, text) =
            exchange(chat(json!({"model": "gpt-ok", "messages": user, "stream": true, "stream_options": {"include_usage": true}})))
                .await;
        let events = sse_data(&text);
        let usage_chunk = &events[events.len() - 2];
        assert_eq!(usage_chunk["choices"], json!([]));
        assert_eq!(usage_chunk["usage"]["prompt_tokens"], 6, "system words count as input: {text}");
        assert_eq!(usage_chunk["usage"]["completion_tokens"], 5);
        assert_eq!(stub.reported_usage()["gpt-ok"], (6, 5));

        // +slowN holds the headers back.
        let started = std::time::Instant::now();
        let (status, _, _) = exchange(chat(json!({"model": "gpt-ok+slow300", "messages": user}))).await;
        assert_eq!(status, 200);
        assert!(started.elapsed() >= Duration::from_millis(300));

        // Status errors, with retry-after on 429.
        let (status, headers, body) = exchange(chat(json!({"model": "gpt-429", "messages": user}))).await;
        assert_eq!((status, &headers["retry-after"]), (429, &HeaderValue::from_static("1")));
        assert_eq!(serde_json::from_str::<Value>(&body).unwrap()["error"]["type"], "rate_limit_error");
        let (status, _, _) = exchange(chat(json!({"model": "gpt-503", "messages": user}))).await;
        assert_eq!(status, 503);
        let (status, _, body) =
            exchange(messages().json(&json!({"model": "claude-529", "max_tokens": 10, "messages": user}))).await;
        assert_eq!(status, 529);
        assert_eq!(serde_json::from_str::<Value>(&body).unwrap()["error"]["type"], "overloaded_error");

        // Anthropic's required headers and fields.
        let (status, _, body) = exchange(
            client
                .post(format!("{}/v1/messages", stub.base))
                .header("x-api-key", "k")
                .json(&json!({"model": "claude-ok", "max_tokens": 10, "messages": user})),
        )
        .await;
        assert_eq!(status, 400);
        assert_eq!(serde_json::from_str::<Value>(&body).unwrap()["error"]["type"], "invalid_request_error");
        let (status, _, _) =
            exchange(messages().json(&json!({"model": "claude-ok", "messages": user}))).await;
        assert_eq!(status, 400, "max_tokens is required");

        // Anthropic streaming: the named events in order.
        let (_, _, text) = exchange(
            messages().json(&json!({"model": "claude-ok", "max_tokens": 100, "stream": true, "system": "be brief", "messages": [{"role": "user", "content": [{"type": "text", "text": "a b c d"}]}]})),
        )
        .await;
        let names: Vec<&str> = text.lines().filter_map(|l| l.strip_prefix("event: ")).collect();
        assert_eq!(
            names,
            ["message_start", "content_block_start", "ping", "content_block_delta", "content_block_delta", "content_block_stop", "message_delta", "message_stop"]
        );
        let events = sse_data(&text);
        assert_eq!(events[0]["message"]["usage"]["input_tokens"], 6);
        assert_eq!(events[6]["usage"]["output_tokens"], 5);

        // The model lists.
        let (_, _, body) = exchange(client.get(format!("{}/v1/models", stub.base))).await;
        assert_eq!(serde_json::from_str::<Value>(&body).unwrap()["object"], "list");
        let (_, _, body) =
            exchange(client.get(format!("{}/v1/models", stub.base)).header("anthropic-version", "2023-06-01")).await;
        assert_eq!(serde_json::from_str::<Value>(&body).unwrap()["has_more"], false);
    });
}
