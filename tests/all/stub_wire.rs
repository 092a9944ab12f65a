//! The stub's OpenAI Responses and Gemini APIs, and the scripted turns of an agent's
//! model (`+agent`) in every format. See `stub.rs` for the model-name modifiers.

use super::*;

/// What the scripted agent runs through sandgate's `execute` tool.
pub const AGENT_CODE: &str = "return 6 * 7";

/// What an agent's model does next.
enum Turn {
    Say(String),
    Call { name: String, namespace: Option<String>, arguments: Value },
}

/// What the agent's model says when asked to compact a conversation (sandgate's
/// compaction instruction), before the latest tool answer.
const SUMMARY: &str = "SUMMARY: the execute tool answered ";

/// The agent's next turn (`body` is the whole request): asked to compact, summarise
/// as [`SUMMARY`] and the latest tool answer; once a tool answered (`answered`, or a
/// summary of an earlier answer), say so; else call the offered tool whose name ends
/// in `execute`; `None` when there is none.
fn agent_turn(tools: &[(String, Option<String>)], answered: Option<String>, body: &Value) -> Option<Turn> {
    let mut texts = Vec::new();
    strings(body, &mut texts);
    // sandgate's instruction, or Codex's own when it compacts locally.
    let compacting =
        |text: &String| text.starts_with("Compact this conversation") || text.contains("CONTEXT CHECKPOINT COMPACTION");
    let summarised_before = texts.iter().any(|text| text.contains(SUMMARY));
    if answered.is_none() && !summarised_before && texts.iter().any(compacting) {
        let latest = latest_answer(body).unwrap_or_else(|| "nothing".into());
        return Some(Turn::Say(format!("{SUMMARY}{}", latest.trim())));
    }
    let summarised = texts.iter().find_map(|text| text.split_once(SUMMARY).map(|(_, answer)| answer.to_string()));
    if let Some(answer) = answered.or(summarised) {
        return Some(Turn::Say(format!("DONE: {}", answer.trim())));
    }
    let (name, namespace) = tools.iter().find(|(name, _)| name.ends_with("execute"))?;
    Some(Turn::Call { name: name.clone(), namespace: namespace.clone(), arguments: json!({ "code": AGENT_CODE }) })
}

impl Turn {
    fn output_tokens(&self) -> u64 {
        match self {
            Turn::Say(text) => words(text),
            Turn::Call { arguments, .. } => words(&arguments.to_string()).max(1),
        }
    }

    fn reply(&self, input_tokens: u64) -> Reply {
        let text = match self {
            Turn::Say(text) => text.clone(),
            Turn::Call { arguments, .. } => arguments.to_string(),
        };
        Reply { text, input_tokens, output_tokens: self.output_tokens(), truncated: false }
    }
}

/// Every string in `value`, in order.
fn strings(value: &Value, out: &mut Vec<String>) {
    match value {
        Value::String(text) => out.push(text.clone()),
        Value::Array(items) => items.iter().for_each(|item| strings(item, out)),
        Value::Object(map) => map.values().for_each(|item| strings(item, out)),
        _ => {}
    }
}

/// The latest tool answer anywhere in a request, in any format: a chat `tool`
/// message, a Responses `function_call_output`, an Anthropic `tool_result`, a Gemini
/// `functionResponse`.
fn latest_answer(value: &Value) -> Option<String> {
    let mut latest = None;
    fn walk(value: &Value, latest: &mut Option<String>) {
        match value {
            Value::Array(items) => items.iter().for_each(|item| walk(item, latest)),
            Value::Object(map) => {
                if value["role"] == "tool" {
                    *latest = Some(answer_text(&value["content"]));
                } else if value["type"] == "function_call_output" {
                    *latest = Some(answer_text(&value["output"]));
                } else if value["type"] == "tool_result" {
                    *latest = Some(answer_text(&value["content"]));
                } else if let Some(response) = map.get("functionResponse") {
                    *latest = Some(answer_text(&response["response"]));
                } else {
                    map.values().for_each(|item| walk(item, latest));
                }
            }
            _ => {}
        }
    }
    walk(value, &mut latest);
    latest
}

/// The words of every text in a request's messages, items or contents (what the stub
/// counts as input tokens): strings, and the `text`, `content`, `input` and `output`
/// of objects, wherever they nest.
fn all_words(value: &Value) -> u64 {
    match value {
        Value::String(text) => words(text),
        Value::Array(items) => items.iter().map(all_words).sum(),
        Value::Object(map) => map
            .iter()
            .filter(|(key, _)| matches!(key.as_str(), "text" | "content" | "input" | "output" | "parts" | "response"))
            .map(|(_, value)| all_words(value))
            .sum(),
        _ => 0,
    }
}

/// The text of a tool's answer: a string, or the texts of an array of parts.
fn answer_text(value: &Value) -> String {
    match value {
        Value::String(text) => text.clone(),
        Value::Array(parts) => parts.iter().filter_map(|p| p["text"].as_str()).collect::<Vec<_>>().join("\n"),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

fn settle(state: &Shared, model: &str, reply: &Reply) {
    bill(state, model, reply);
    add_usage(state, model, reply.input_tokens, reply.output_tokens);
}

// ---------------------------------------------------------------------------------
// Agent turns in Chat Completions and Messages

pub(super) fn chat_agent(state: &Shared, body: &Value, model: &str, behaviour: &Behaviour) -> Option<Response> {
    if !behaviour.agent {
        return None;
    }
    let tools: Vec<(String, Option<String>)> = body["tools"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|t| t["function"]["name"].as_str().map(|n| (n.to_string(), None)))
        .collect();
    let messages = body["messages"].as_array()?;
    let answered = messages.last().filter(|m| m["role"] == "tool").map(|m| answer_text(&m["content"]));
    let turn = agent_turn(&tools, answered, body)?;
    let reply = turn.reply(all_words(&body["messages"]));
    settle(state, model, &reply);
    let (call_id, id, created) = (format!("call_{}", id()), format!("chatcmpl-{}", id()), now());
    let usage = json!({"prompt_tokens": reply.input_tokens, "completion_tokens": reply.output_tokens,
        "total_tokens": reply.input_tokens + reply.output_tokens});
    let (message, finish) = match &turn {
        Turn::Say(text) => (json!({"role": "assistant", "content": text}), "stop"),
        Turn::Call { name, arguments, .. } => (
            json!({"role": "assistant", "content": null, "tool_calls": [{"id": call_id,
                "type": "function", "function": {"name": name, "arguments": arguments.to_string()}}]}),
            "tool_calls",
        ),
    };
    if body["stream"] != true {
        let response = json!({"id": id, "object": "chat.completion", "created": created, "model": model,
            "choices": [{"index": 0, "message": message, "logprobs": null, "finish_reason": finish}], "usage": usage});
        return Some(json_response(200, &response, Provider::OpenAi));
    }
    let include_usage = body["stream_options"]["include_usage"] == true;
    let (events, stream) = Events::new(behaviour.gap_ms);
    let model = model.to_string();
    tokio::spawn(async move {
        let chunk = |delta: Value, finish: Value| {
            json!({"id": id, "object": "chat.completion.chunk", "created": created, "model": model,
                "choices": [{"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish}]})
        };
        let mut sequence = vec![chunk(json!({"role": "assistant", "content": ""}), Value::Null)];
        match &turn {
            Turn::Say(text) => {
                sequence.extend(chunks(text).into_iter().map(|p| chunk(json!({"content": p}), Value::Null)))
            }
            Turn::Call { .. } => {
                let call = &message["tool_calls"][0];
                sequence.push(chunk(
                    json!({"tool_calls": [{"index": 0, "id": call["id"], "type": "function",
                        "function": {"name": call["function"]["name"], "arguments": ""}}]}),
                    Value::Null,
                ));
                sequence.push(chunk(
                    json!({"tool_calls": [{"index": 0, "function": {"arguments": call["function"]["arguments"]}}]}),
                    Value::Null,
                ));
            }
        }
        sequence.push(chunk(json!({}), json!(finish)));
        if include_usage {
            sequence.push(json!({"id": id, "object": "chat.completion.chunk", "created": created, "model": model,
                "choices": [], "usage": usage}));
        }
        for data in &sequence {
            if !events.data(data).await {
                return;
            }
        }
        events.send("data: [DONE]\n\n".to_string()).await;
    });
    Some(sse_response(stream, Provider::OpenAi))
}

pub(super) fn messages_agent(state: &Shared, body: &Value, model: &str, behaviour: &Behaviour) -> Option<Response> {
    if !behaviour.agent {
        return None;
    }
    let tools: Vec<(String, Option<String>)> = body["tools"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|t| t["name"].as_str().map(|n| (n.to_string(), None)))
        .collect();
    let last = body["messages"].as_array()?.last()?;
    let answered = last["content"]
        .as_array()
        .and_then(|blocks| blocks.iter().find(|b| b["type"] == "tool_result").map(|b| answer_text(&b["content"])));
    let turn = agent_turn(&tools, answered, body)?;
    let reply = turn.reply(all_words(&body["messages"]) + all_words(&body["system"]));
    settle(state, model, &reply);
    let id = format!("msg_{}", id());
    let (block, stop) = match &turn {
        Turn::Say(text) => (json!({"type": "text", "text": text}), "end_turn"),
        Turn::Call { name, arguments, .. } => (
            json!({"type": "tool_use", "id": format!("toolu_{}", super::id()), "name": name, "input": arguments}),
            "tool_use",
        ),
    };
    let usage = json!({"input_tokens": reply.input_tokens, "output_tokens": reply.output_tokens,
        "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0});
    if body["stream"] != true {
        let response = json!({"id": id, "type": "message", "role": "assistant", "model": model, "content": [block],
            "stop_reason": stop, "stop_sequence": null, "usage": usage});
        return Some(json_response(200, &response, Provider::Anthropic));
    }
    let (events, stream) = Events::new(behaviour.gap_ms);
    let model = model.to_string();
    tokio::spawn(async move {
        let mut start_usage = usage.clone();
        start_usage["output_tokens"] = json!(1);
        let mut sequence = vec![(
            "message_start",
            json!({"type": "message_start", "message": {"id": id, "type": "message", "role": "assistant",
                "model": model, "content": [], "stop_reason": null, "stop_sequence": null, "usage": start_usage}}),
        )];
        match &turn {
            Turn::Say(text) => {
                sequence.push((
                    "content_block_start",
                    json!({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}),
                ));
                for piece in chunks(text) {
                    sequence.push((
                        "content_block_delta",
                        json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": piece}}),
                    ));
                }
            }
            Turn::Call { arguments, .. } => {
                let mut opened = block.clone();
                opened["input"] = json!({});
                sequence.push((
                    "content_block_start",
                    json!({"type": "content_block_start", "index": 0, "content_block": opened}),
                ));
                sequence.push((
                    "content_block_delta",
                    json!({"type": "content_block_delta", "index": 0,
                        "delta": {"type": "input_json_delta", "partial_json": arguments.to_string()}}),
                ));
            }
        }
        sequence.push(("content_block_stop", json!({"type": "content_block_stop", "index": 0})));
        sequence.push((
            "message_delta",
            json!({"type": "message_delta", "delta": {"stop_reason": stop, "stop_sequence": null},
                "usage": {"output_tokens": usage["output_tokens"]}}),
        ));
        sequence.push(("message_stop", json!({"type": "message_stop"})));
        for (event, data) in &sequence {
            if !events.named(event, data).await {
                return;
            }
        }
    });
    Some(sse_response(stream, Provider::Anthropic))
}

// ---------------------------------------------------------------------------------
// OpenAI Responses

/// `POST /v1/responses`, stateless (`store: false` is all the stub keeps).
pub(super) async fn responses(State(state): State<Shared>, headers: HeaderMap, body: Bytes) -> Response {
    let provider = Provider::OpenAi;
    let body = match record(&state, "/v1/responses", &headers, &body) {
        Ok(body) => body,
        Err(e) => return invalid(provider, &format!("We could not parse the JSON body of your request. (HINT: {e})")),
    };
    let Some(model) = body["model"].as_str().map(str::to_string) else {
        return invalid(provider, "Missing required parameter: 'model'.");
    };
    let behaviour = Behaviour::of(&model);
    slow(&state, behaviour.slow_ms).await;
    if !header(&headers, "authorization").is_some_and(|v| v.starts_with("Bearer ") && v.len() > 7) {
        return error_response(provider, 401, "invalid_request_error", "You didn't provide an API key.");
    }
    let items = match &body["input"] {
        Value::String(text) => vec![json!({"type": "message", "role": "user", "content": text})],
        Value::Array(items) => items.clone(),
        _ => return invalid(provider, "Missing required parameter: 'input'."),
    };
    let max_tokens = match &body["max_output_tokens"] {
        Value::Null => None,
        value => match value.as_u64() {
            Some(n) if n >= 16 => Some(n),
            _ => return invalid(provider, &format!("Invalid 'max_output_tokens': integer below minimum value. Expected a value >= 16, but got {value} instead.")),
        },
    };
    if let Some(status) = behaviour.error {
        return scripted_error(provider, status);
    }
    let mut tools = Vec::new();
    for tool in body["tools"].as_array().into_iter().flatten() {
        match tool["type"].as_str() {
            Some("function") => tools.extend(tool["name"].as_str().map(|n| (n.to_string(), None))),
            Some("namespace") => {
                let namespace = tool["name"].as_str().unwrap_or_default().to_string();
                for inner in tool["tools"].as_array().into_iter().flatten() {
                    tools.extend(inner["name"].as_str().map(|n| (n.to_string(), Some(namespace.clone()))));
                }
            }
            _ => {}
        }
    }
    let input_tokens = all_words(&body["input"]) + all_words(&body["instructions"]);
    let answered =
        items.last().filter(|item| item["type"] == "function_call_output").map(|item| answer_text(&item["output"]));
    let turn = match behaviour.agent.then(|| agent_turn(&tools, answered, &body)).flatten() {
        Some(turn) => turn,
        None => {
            let last_user = items.iter().rev().find(|i| i["role"] == "user").map(|i| answer_text(&i["content"]));
            let echo = super::reply(&last_user.unwrap_or_default(), input_tokens, max_tokens);
            Turn::Say(echo.text)
        }
    };
    let mut reply = turn.reply(input_tokens);
    if let (Turn::Say(_), Some(max)) = (&turn, max_tokens) {
        let cut = super::reply(reply.text.trim_start_matches("echo: "), input_tokens, Some(max));
        if cut.truncated {
            reply = cut;
        }
    }
    bill(&state, &model, &reply);
    let (response_id, created) = (format!("resp_{}", id()), now());
    let item_id = match &turn {
        Turn::Say(_) => format!("msg_{}", id()),
        Turn::Call { .. } => format!("fc_{}", id()),
    };
    let call_id = format!("call_{}", id());
    let done_item = match &turn {
        Turn::Say(_) => json!({"id": item_id, "type": "message", "status": "completed", "role": "assistant",
            "content": [{"type": "output_text", "text": reply.text, "annotations": [], "logprobs": []}]}),
        Turn::Call { name, namespace, arguments } => {
            let mut item = json!({"id": item_id, "type": "function_call", "status": "completed",
                "arguments": arguments.to_string(), "call_id": call_id, "name": name});
            if let Some(namespace) = namespace {
                item["namespace"] = json!(namespace);
            }
            item
        }
    };
    let usage = json!({"input_tokens": reply.input_tokens, "input_tokens_details": {"cached_tokens": 0},
        "output_tokens": reply.output_tokens, "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": reply.input_tokens + reply.output_tokens});
    let status = if reply.truncated { "incomplete" } else { "completed" };
    let shown = model.clone();
    let response_object = move |status: &str, output: Value, usage: Value| {
        let mut object = json!({"id": response_id, "object": "response", "created_at": created, "status": status,
            "model": shown, "output": output, "parallel_tool_calls": true, "tool_choice": "auto", "tools": [],
            "error": null, "incomplete_details": null, "instructions": null, "metadata": {}, "usage": usage,
            "store": false});
        if status == "incomplete" {
            object["incomplete_details"] = json!({"reason": "max_output_tokens"});
        }
        object
    };
    if body["stream"] != true {
        let response = response_object(status, json!([done_item]), usage);
        if behaviour.midstream_fail {
            return broken_json_response(&response, provider);
        }
        add_usage(&state, &model, reply.input_tokens, reply.output_tokens);
        return json_response(200, &response, provider);
    }
    let (events, stream) = Events::new(behaviour.gap_ms);
    tokio::spawn(async move {
        let mut sequence = 0u64;
        let mut next = |kind: &str, mut data: Value| {
            data["type"] = json!(kind);
            data["sequence_number"] = json!(sequence);
            sequence += 1;
            (kind.to_string(), data)
        };
        let started = response_object("in_progress", json!([]), Value::Null);
        let mut out = vec![
            next("response.created", json!({ "response": started })),
            next("response.in_progress", json!({ "response": started })),
        ];
        let mut added = done_item.clone();
        added["status"] = json!("in_progress");
        match &turn {
            Turn::Say(_) => {
                added["content"] = json!([]);
                out.push(next("response.output_item.added", json!({"output_index": 0, "item": added})));
                out.push(next("response.content_part.added", json!({"item_id": item_id, "output_index": 0,
                    "content_index": 0, "part": {"type": "output_text", "text": "", "annotations": [], "logprobs": []}})));
                for piece in chunks(&reply.text) {
                    out.push(next(
                        "response.output_text.delta",
                        json!({"item_id": item_id, "output_index": 0,
                        "content_index": 0, "delta": piece, "logprobs": []}),
                    ));
                }
                out.push(next(
                    "response.output_text.done",
                    json!({"item_id": item_id, "output_index": 0,
                    "content_index": 0, "text": reply.text, "logprobs": []}),
                ));
                out.push(next(
                    "response.content_part.done",
                    json!({"item_id": item_id, "output_index": 0,
                    "content_index": 0, "part": done_item["content"][0]}),
                ));
            }
            Turn::Call { name, arguments, .. } => {
                added["arguments"] = json!("");
                out.push(next("response.output_item.added", json!({"output_index": 0, "item": added})));
                out.push(next(
                    "response.function_call_arguments.delta",
                    json!({"item_id": item_id, "output_index": 0, "delta": arguments.to_string()}),
                ));
                out.push(next(
                    "response.function_call_arguments.done",
                    json!({"item_id": item_id, "output_index": 0, "arguments": arguments.to_string(), "name": name}),
                ));
            }
        }
        out.push(next("response.output_item.done", json!({"output_index": 0, "item": done_item})));
        let kind = if status == "incomplete" { "response.incomplete" } else { "response.completed" };
        let mut finished = response_object(status, json!([done_item]), usage);
        finished["completed_at"] = json!(now());
        out.push(next(kind, json!({ "response": finished })));
        for (at, (event, data)) in out.iter().enumerate() {
            if !events.named(event, data).await {
                return;
            }
            if behaviour.midstream_fail && data["type"] == "response.output_text.delta" {
                events.abort().await;
                return;
            }
            if at + 1 == out.len() {
                add_usage(&state, &model, reply.input_tokens, reply.output_tokens);
            }
        }
    });
    sse_response(stream, provider)
}

// ---------------------------------------------------------------------------------
// Gemini

#[derive(serde::Deserialize)]
pub(super) struct GeminiQuery {
    key: Option<String>,
    alt: Option<String>,
}

/// `POST /v1/messages/count_tokens`: the words of the system prompt and messages
/// (`{"input_tokens": N}`), as Anthropic counts them without generating anything.
pub(super) async fn messages_count(State(state): State<Shared>, headers: HeaderMap, body: Bytes) -> Response {
    let provider = Provider::Anthropic;
    let body = match record(&state, "/v1/messages/count_tokens", &headers, &body) {
        Ok(body) => body,
        Err(e) => return error_response(provider, 400, "invalid_request_error", &e.to_string()),
    };
    if header(&headers, "anthropic-version").is_none() {
        return error_response(provider, 400, "invalid_request_error", "anthropic-version: header is required");
    }
    let Some(messages) = body["messages"].as_array() else {
        return error_response(provider, 400, "invalid_request_error", "messages: Field required");
    };
    let tokens = all_words(&body["system"]) + messages.iter().map(|m| all_words(&m["content"])).sum::<u64>();
    json_response(200, &json!({"input_tokens": tokens}), provider)
}

/// `POST /v1beta/models/{model}:generateContent`, `:streamGenerateContent` and
/// `:countTokens`.
pub(super) async fn gemini(
    State(state): State<Shared>,
    axum::extract::Path(target): axum::extract::Path<String>,
    axum::extract::Query(query): axum::extract::Query<GeminiQuery>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let provider = Provider::Gemini;
    let path = format!("/v1beta/models/{target}");
    let body = match record(&state, &path, &headers, &body) {
        Ok(body) => body,
        Err(e) => {
            return error_response(provider, 400, "INVALID_ARGUMENT", &format!("Invalid JSON payload received. {e}"))
        }
    };
    let Some((model, action)) = target.rsplit_once(':') else {
        return error_response(
            provider,
            404,
            "NOT_FOUND",
            &format!("models/{target} is not found for API version v1beta"),
        );
    };
    let stream = match action {
        "generateContent" => false,
        "streamGenerateContent" => true,
        "countTokens" => {
            let counted = json!({"totalTokens": all_words(&body["contents"]), "promptTokensDetails": []});
            return json_response(200, &counted, provider);
        }
        _ => return error_response(provider, 404, "NOT_FOUND", &format!("Method {action} not found")),
    };
    let behaviour = Behaviour::of(model);
    slow(&state, behaviour.slow_ms).await;
    if header(&headers, "x-goog-api-key").or(query.key).is_none_or(|key| key.is_empty()) {
        return error_response(provider, 403, "PERMISSION_DENIED", "Method doesn't allow unregistered callers (callers without established identity). Please use API Key or other form of API consumer identity to call this API.");
    }
    if body.get("model").is_some() {
        return error_response(
            provider,
            400,
            "INVALID_ARGUMENT",
            "Invalid JSON payload received. Unknown name \"model\": Cannot find field.",
        );
    }
    let Some(contents) = body["contents"].as_array().filter(|c| !c.is_empty()) else {
        return error_response(
            provider,
            400,
            "INVALID_ARGUMENT",
            "* GenerateContentRequest.contents: contents is not specified",
        );
    };
    if let Some(status) = behaviour.error {
        return scripted_error(provider, status);
    }
    let tools: Vec<(String, Option<String>)> = body["tools"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|t| t["functionDeclarations"].as_array().cloned().unwrap_or_default())
        .filter_map(|d| d["name"].as_str().map(|n| (n.to_string(), None)))
        .collect();
    let input_tokens = all_words(&body["contents"]) + all_words(&body["systemInstruction"]);
    let last = contents.last().cloned().unwrap_or(Value::Null);
    let answered = last["parts"].as_array().and_then(|parts| {
        parts.iter().find_map(|p| p.get("functionResponse")).map(|r| answer_text(&r["response"]["output"]))
    });
    let max_tokens = body["generationConfig"]["maxOutputTokens"].as_u64();
    let turn = match behaviour.agent.then(|| agent_turn(&tools, answered, &body)).flatten() {
        Some(turn) => turn,
        None => {
            let text = last["parts"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|p| p["text"].as_str())
                .collect::<Vec<_>>()
                .join(" ");
            Turn::Say(super::reply(&text, input_tokens, max_tokens).text)
        }
    };
    let reply = turn.reply(input_tokens);
    let truncated = max_tokens.is_some_and(|max| reply.output_tokens > max) && matches!(turn, Turn::Say(_));
    bill(&state, model, &reply);
    let usage = json!({"promptTokenCount": reply.input_tokens, "candidatesTokenCount": reply.output_tokens,
        "totalTokenCount": reply.input_tokens + reply.output_tokens});
    let finish = if truncated { "MAX_TOKENS" } else { "STOP" };
    let response_id = id();
    let chunk = |parts: Value, last: bool| {
        let mut candidate = json!({"content": {"parts": parts, "role": "model"}, "index": 0});
        let mut chunk = json!({"candidates": [], "modelVersion": model, "responseId": response_id});
        if last {
            candidate["finishReason"] = json!(finish);
            chunk["usageMetadata"] = usage.clone();
        }
        chunk["candidates"] = json!([candidate]);
        chunk
    };
    let call_part = |name: &str, arguments: &Value| json!([{"functionCall": {"name": name, "args": arguments}}]);
    if !stream {
        let parts = match &turn {
            Turn::Say(text) => json!([{ "text": text }]),
            Turn::Call { name, arguments, .. } => call_part(name, arguments),
        };
        add_usage(&state, model, reply.input_tokens, reply.output_tokens);
        return json_response(200, &chunk(parts, true), provider);
    }
    if query.alt.as_deref() != Some("sse") {
        return error_response(provider, 400, "INVALID_ARGUMENT", "the stub streams only with alt=sse");
    }
    let mut sequence = Vec::new();
    match &turn {
        Turn::Say(text) => {
            let pieces = chunks(text);
            for (at, piece) in pieces.iter().enumerate() {
                sequence.push(chunk(json!([{ "text": piece }]), at + 1 == pieces.len()));
            }
        }
        Turn::Call { name, arguments, .. } => sequence.push(chunk(call_part(name, arguments), true)),
    }
    let (events, stream) = Events::new(behaviour.gap_ms);
    let model = model.to_string();
    tokio::spawn(async move {
        for (at, data) in sequence.iter().enumerate() {
            if !events.send(format!("data: {data}\r\n\r\n")).await {
                return;
            }
            if behaviour.midstream_fail && at == 0 {
                events.abort().await;
                return;
            }
        }
        add_usage(&state, &model, reply.input_tokens, reply.output_tokens);
    });
    sse_response(stream, provider)
}
