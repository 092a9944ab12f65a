//! OpenAI Chat Completions (`POST /v1/chat/completions`): OpenAI, and the many
//! servers that speak its dialect (vLLM, Ollama, OpenRouter, …).

use bytes::Bytes;
use serde_json::{json, Map, Value};

use super::sse::{frame, SseEvent};
use super::{
    new_id, now_secs, result_text, schema, stop_sequences, text, Conversation, Event, Message, OutputFormat, Part,
    Reply, Role, Stop, Tool, ToolChoice,
};
use crate::model::usage::Tokens;

/// Reads a client's Chat Completions request.
pub fn read_request(body: &Value) -> Result<Conversation, String> {
    let mut conversation = Conversation::default();
    let messages = body.get("messages").and_then(Value::as_array).ok_or("`messages` must be an array")?;
    for message in messages {
        let role = text(message, "role").ok_or("each message needs a `role`")?;
        let parts = content_parts(message.get("content"))?;
        match role {
            "system" | "developer" => {
                let text: String = parts.iter().filter_map(Part::text).collect::<Vec<_>>().join("\n");
                if conversation.messages.is_empty() {
                    conversation.system.push(text);
                } else {
                    conversation.messages.push(Message::new(Role::System, vec![Part::Text(text)]));
                }
            }
            "user" => conversation.messages.push(Message::new(Role::User, parts)),
            "assistant" => {
                let mut parts = parts;
                if let Some(reasoning) = text(message, "reasoning_content").filter(|r| !r.is_empty()) {
                    parts.insert(0, Part::Reasoning(reasoning.to_string()));
                }
                for call in message.get("tool_calls").and_then(Value::as_array).into_iter().flatten() {
                    parts.push(Part::ToolCall {
                        id: text(call, "id").unwrap_or_default().to_string(),
                        name: call.pointer("/function/name").and_then(Value::as_str).unwrap_or_default().to_string(),
                        arguments: call
                            .pointer("/function/arguments")
                            .and_then(Value::as_str)
                            .unwrap_or("{}")
                            .to_string(),
                    });
                }
                conversation.messages.push(Message::new(Role::Assistant, parts));
            }
            "tool" | "function" => {
                let result = Part::ToolResult {
                    id: text(message, "tool_call_id").unwrap_or_default().to_string(),
                    name: text(message, "name").map(str::to_string),
                    content: parts,
                    is_error: false,
                };
                // Consecutive results answer one turn of calls: one user message.
                match conversation.messages.last_mut() {
                    Some(last)
                        if last.role == Role::User
                            && last.parts.iter().all(|p| matches!(p, Part::ToolResult { .. })) =>
                    {
                        last.parts.push(result)
                    }
                    _ => conversation.messages.push(Message::new(Role::User, vec![result])),
                }
            }
            other => return Err(format!("unknown message role `{other}`")),
        }
    }
    for tool in body.get("tools").and_then(Value::as_array).into_iter().flatten() {
        let function = tool.get("function").ok_or("each tool needs a `function`")?;
        conversation.tools.push(Tool {
            name: text(function, "name").ok_or("each function needs a `name`")?.to_string(),
            description: text(function, "description").map(str::to_string),
            parameters: schema(function.get("parameters")),
            namespace: None,
            hosted: None,
        });
    }
    conversation.tool_choice = match body.get("tool_choice") {
        Some(Value::String(choice)) => Some(match choice.as_str() {
            "none" => ToolChoice::None,
            "required" => ToolChoice::Required,
            _ => ToolChoice::Auto,
        }),
        Some(choice @ Value::Object(_)) => {
            choice.pointer("/function/name").and_then(Value::as_str).map(|name| ToolChoice::Named(name.to_string()))
        }
        _ => None,
    };
    conversation.parallel_tool_calls = body.get("parallel_tool_calls").and_then(Value::as_bool);
    conversation.max_output = ["max_completion_tokens", "max_tokens"].iter().find_map(|k| body.get(*k)?.as_u64());
    conversation.temperature = body.get("temperature").and_then(Value::as_f64);
    conversation.top_p = body.get("top_p").and_then(Value::as_f64);
    conversation.stop = stop_sequences(body.get("stop"));
    conversation.output = match body.pointer("/response_format/type").and_then(Value::as_str) {
        Some("json_object") => Some(OutputFormat::JsonObject),
        Some("json_schema") => {
            let spec = body.pointer("/response_format/json_schema").cloned().unwrap_or(Value::Null);
            Some(OutputFormat::JsonSchema {
                name: text(&spec, "name").unwrap_or("output").to_string(),
                schema: schema(spec.get("schema")),
                strict: spec.get("strict").and_then(Value::as_bool),
            })
        }
        _ => None,
    };
    conversation.reasoning_effort = text(body, "reasoning_effort").map(str::to_string);
    conversation.stream = body.get("stream").and_then(Value::as_bool) == Some(true);
    Ok(conversation)
}

/// A message's `content`: a string, or an array of text and image parts.
fn content_parts(content: Option<&Value>) -> Result<Vec<Part>, String> {
    Ok(match content {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::String(text)) => vec![Part::Text(text.clone())],
        Some(Value::Array(parts)) => parts
            .iter()
            .filter_map(|part| match text(part, "type") {
                Some("text") | Some("input_text") => text(part, "text").map(|t| Part::Text(t.to_string())),
                Some("image_url") => part
                    .pointer("/image_url/url")
                    .or_else(|| part.get("image_url"))
                    .and_then(Value::as_str)
                    .map(|url| Part::Image(url.to_string())),
                _ => None,
            })
            .collect(),
        Some(_) => return Err("a message's `content` must be a string or an array".into()),
    })
}

/// Writes a Chat Completions request for `model`.
pub fn write_request(conversation: &Conversation, model: &str) -> Value {
    let mut messages = Vec::new();
    if !conversation.system.is_empty() {
        messages.push(json!({"role": "system", "content": conversation.system.join("\n\n")}));
    }
    for message in &conversation.messages {
        match message.role {
            Role::System => {
                let text: Vec<&str> = message.parts.iter().filter_map(Part::text).collect();
                messages.push(json!({"role": "system", "content": text.join("\n")}));
            }
            Role::User => {
                let mut rest = Vec::new();
                for part in &message.parts {
                    match part {
                        Part::ToolResult { id, content, is_error, .. } => {
                            let mut text = result_text(content);
                            if *is_error && !text.starts_with("Error") {
                                text = format!("Error: {text}");
                            }
                            messages.push(json!({"role": "tool", "tool_call_id": id, "content": text}));
                        }
                        Part::Text(text) => rest.push(json!({"type": "text", "text": text})),
                        Part::Image(url) => rest.push(json!({"type": "image_url", "image_url": {"url": url}})),
                        _ => {}
                    }
                }
                if rest.iter().all(|p| p["type"] == "text") && !rest.is_empty() {
                    let text: Vec<&str> = rest.iter().filter_map(|p| p["text"].as_str()).collect();
                    messages.push(json!({"role": "user", "content": text.join("\n")}));
                } else if !rest.is_empty() {
                    messages.push(json!({"role": "user", "content": rest}));
                }
            }
            Role::Assistant => {
                let text: String = message.parts.iter().filter_map(Part::text).collect();
                let calls: Vec<Value> = message
                    .parts
                    .iter()
                    .filter_map(|part| match part {
                        Part::ToolCall { id, name, arguments } => Some(
                            json!({"id": id, "type": "function", "function": {"name": name, "arguments": arguments}}),
                        ),
                        _ => None,
                    })
                    .collect();
                let mut out = json!({"role": "assistant", "content": if text.is_empty() { Value::Null } else { Value::String(text) }});
                if !calls.is_empty() {
                    out["tool_calls"] = Value::Array(calls);
                }
                messages.push(out);
            }
        }
    }
    let mut out = json!({"model": model, "messages": messages});
    let tools: Vec<Value> = conversation
        .tools
        .iter()
        .filter(|tool| tool.hosted.is_none())
        .map(|tool| {
            let mut function = json!({"name": tool.name, "parameters": tool.parameters});
            if let Some(description) = &tool.description {
                function["description"] = Value::String(description.clone());
            }
            json!({"type": "function", "function": function})
        })
        .collect();
    if !tools.is_empty() {
        out["tools"] = Value::Array(tools);
        if let Some(choice) = &conversation.tool_choice {
            out["tool_choice"] = match choice {
                ToolChoice::Auto => json!("auto"),
                ToolChoice::None => json!("none"),
                ToolChoice::Required => json!("required"),
                ToolChoice::Named(name) => json!({"type": "function", "function": {"name": name}}),
            };
        }
        if let Some(parallel) = conversation.parallel_tool_calls {
            out["parallel_tool_calls"] = Value::Bool(parallel);
        }
    }
    if let Some(max) = conversation.max_output {
        out["max_completion_tokens"] = json!(max);
    }
    if let Some(temperature) = conversation.temperature {
        out["temperature"] = json!(temperature);
    }
    if let Some(top_p) = conversation.top_p {
        out["top_p"] = json!(top_p);
    }
    if !conversation.stop.is_empty() {
        out["stop"] = json!(conversation.stop);
    }
    match &conversation.output {
        Some(OutputFormat::JsonObject) => out["response_format"] = json!({"type": "json_object"}),
        Some(OutputFormat::JsonSchema { name, schema, strict }) => {
            let mut spec = json!({"name": name, "schema": schema});
            if let Some(strict) = strict {
                spec["strict"] = Value::Bool(*strict);
            }
            out["response_format"] = json!({"type": "json_schema", "json_schema": spec});
        }
        None => {}
    }
    if let Some(effort) = &conversation.reasoning_effort {
        out["reasoning_effort"] = Value::String(effort.clone());
    }
    if conversation.stream {
        out["stream"] = Value::Bool(true);
        out["stream_options"] = json!({"include_usage": true});
    }
    out
}

fn stop_of(reason: Option<&str>) -> Stop {
    match reason {
        Some("length") => Stop::MaxTokens,
        Some("tool_calls") | Some("function_call") => Stop::ToolUse,
        Some("content_filter") => Stop::ContentFilter,
        _ => Stop::End,
    }
}

fn reason_of(stop: Stop) -> &'static str {
    match stop {
        Stop::End => "stop",
        Stop::MaxTokens => "length",
        Stop::ToolUse => "tool_calls",
        Stop::ContentFilter => "content_filter",
    }
}

/// Usage in Chat Completions' shape.
pub fn tokens(usage: &Value) -> Tokens {
    let number = |pointer: &str| usage.pointer(pointer).and_then(Value::as_u64).unwrap_or(0);
    Tokens {
        input: number("/prompt_tokens"),
        output: number("/completion_tokens"),
        cached: number("/prompt_tokens_details/cached_tokens"),
    }
}

fn usage_json(tokens: &Tokens) -> Value {
    json!({
        "prompt_tokens": tokens.input,
        "completion_tokens": tokens.output,
        "total_tokens": tokens.input + tokens.output,
        "prompt_tokens_details": {"cached_tokens": tokens.cached},
    })
}

/// Reads a provider's whole Chat Completions answer.
pub fn read_reply(body: &Value) -> Reply {
    let message = body.pointer("/choices/0/message").cloned().unwrap_or(Value::Null);
    let mut parts = Vec::new();
    if let Some(reasoning) = text(&message, "reasoning_content").filter(|r| !r.is_empty()) {
        parts.push(Part::Reasoning(reasoning.to_string()));
    }
    if let Some(content) = text(&message, "content").filter(|c| !c.is_empty()) {
        parts.push(Part::Text(content.to_string()));
    }
    for call in message.get("tool_calls").and_then(Value::as_array).into_iter().flatten() {
        parts.push(Part::ToolCall {
            id: text(call, "id").unwrap_or_default().to_string(),
            name: call.pointer("/function/name").and_then(Value::as_str).unwrap_or_default().to_string(),
            arguments: call.pointer("/function/arguments").and_then(Value::as_str).unwrap_or("{}").to_string(),
        });
    }
    Reply {
        id: text(body, "id").unwrap_or_default().to_string(),
        model: text(body, "model").unwrap_or_default().to_string(),
        parts,
        stop: stop_of(body.pointer("/choices/0/finish_reason").and_then(Value::as_str)),
        usage: body.get("usage").filter(|u| u.is_object()).map(tokens),
    }
}

/// Writes a whole Chat Completions answer.
pub fn write_reply(reply: &Reply) -> Value {
    let text = reply.text();
    let calls: Vec<Value> = reply
        .parts
        .iter()
        .filter_map(|part| match part {
            Part::ToolCall { id, name, arguments } => {
                Some(json!({"id": id, "type": "function", "function": {"name": name, "arguments": arguments}}))
            }
            _ => None,
        })
        .collect();
    let mut message = json!({"role": "assistant", "content": if text.is_empty() && !calls.is_empty() { Value::Null } else { Value::String(text) }});
    if !calls.is_empty() {
        message["tool_calls"] = Value::Array(calls);
    }
    let mut out = json!({
        "id": if reply.id.starts_with("chatcmpl") { reply.id.clone() } else { new_id("chatcmpl") },
        "object": "chat.completion",
        "created": now_secs(),
        "model": reply.model,
        "choices": [{"index": 0, "message": message, "logprobs": null, "finish_reason": reason_of(reply.stop)}],
    });
    if let Some(usage) = &reply.usage {
        out["usage"] = usage_json(usage);
    }
    out
}

/// Reads a Chat Completions stream.
#[derive(Debug, Default)]
pub struct Decoder {
    started: bool,
    next_block: usize,
    text_block: Option<usize>,
    reasoning_block: Option<usize>,
    /// The block of each tool call, by its index in `tool_calls`.
    calls: Vec<(u64, usize)>,
    open: Vec<usize>,
    done: bool,
}

impl Decoder {
    fn block(&mut self) -> usize {
        let block = self.next_block;
        self.next_block += 1;
        self.open.push(block);
        block
    }

    fn close(&mut self, out: &mut Vec<Event>, block: Option<usize>) {
        if let Some(block) = block {
            if let Some(at) = self.open.iter().position(|b| *b == block) {
                self.open.remove(at);
                out.push(Event::BlockEnd { block });
            }
        }
    }
}

impl super::Decoder for Decoder {
    fn decode(&mut self, event: &SseEvent) -> Vec<Event> {
        let mut out = Vec::new();
        if event.data == "[DONE]" {
            self.done = true;
            return out;
        }
        let Ok(chunk) = serde_json::from_str::<Value>(&event.data) else { return out };
        if let Some(error) = chunk.get("error").filter(|e| e.is_object()) {
            out.push(Event::Error { message: text(error, "message").unwrap_or("the provider failed").to_string() });
            return out;
        }
        if !self.started {
            self.started = true;
            out.push(Event::Start {
                id: text(&chunk, "id").unwrap_or_default().to_string(),
                model: text(&chunk, "model").unwrap_or_default().to_string(),
            });
        }
        for choice in chunk.get("choices").and_then(Value::as_array).into_iter().flatten().take(1) {
            let delta = choice.get("delta").cloned().unwrap_or(Value::Null);
            if let Some(reasoning) = text(&delta, "reasoning_content").filter(|r| !r.is_empty()) {
                let block = match self.reasoning_block {
                    Some(block) => block,
                    None => {
                        let block = self.block();
                        self.reasoning_block = Some(block);
                        out.push(Event::ReasoningStart { block });
                        block
                    }
                };
                out.push(Event::Reasoning { block, delta: reasoning.to_string() });
            }
            if let Some(content) = text(&delta, "content").filter(|c| !c.is_empty()) {
                let reasoning = self.reasoning_block.take();
                self.close(&mut out, reasoning);
                let block = match self.text_block {
                    Some(block) => block,
                    None => {
                        let block = self.block();
                        self.text_block = Some(block);
                        out.push(Event::TextStart { block });
                        block
                    }
                };
                out.push(Event::Text { block, delta: content.to_string() });
            }
            for call in delta.get("tool_calls").and_then(Value::as_array).into_iter().flatten() {
                let index = call.get("index").and_then(Value::as_u64).unwrap_or(self.calls.len() as u64);
                let block = match self.calls.iter().find(|(i, _)| *i == index) {
                    Some((_, block)) => *block,
                    None => {
                        let (text_block, reasoning) = (self.text_block.take(), self.reasoning_block.take());
                        self.close(&mut out, text_block);
                        self.close(&mut out, reasoning);
                        if let Some((_, last)) = self.calls.last().copied() {
                            self.close(&mut out, Some(last));
                        }
                        let block = self.block();
                        self.calls.push((index, block));
                        out.push(Event::ToolCallStart {
                            block,
                            id: text(call, "id").map_or_else(|| new_id("call"), str::to_string),
                            name: call
                                .pointer("/function/name")
                                .and_then(Value::as_str)
                                .unwrap_or_default()
                                .to_string(),
                        });
                        block
                    }
                };
                if let Some(arguments) = call.pointer("/function/arguments").and_then(Value::as_str) {
                    if !arguments.is_empty() {
                        out.push(Event::ToolCallArguments { block, delta: arguments.to_string() });
                    }
                }
            }
            if let Some(reason) = choice.get("finish_reason").and_then(Value::as_str) {
                for block in std::mem::take(&mut self.open) {
                    out.push(Event::BlockEnd { block });
                }
                out.push(Event::Finish { stop: stop_of(Some(reason)) });
            }
        }
        if let Some(usage) = chunk.get("usage").filter(|u| u.is_object()) {
            out.push(Event::Usage(tokens(usage)));
        }
        out
    }

    fn finished(&self) -> bool {
        self.done
    }
}

/// Writes a Chat Completions stream.
pub struct Encoder {
    id: String,
    model: String,
    created: u64,
    /// Each tool call block's index in `tool_calls`.
    calls: Vec<usize>,
    stop: Option<Stop>,
    usage: Option<Tokens>,
    /// The first chunk (with the role) is out.
    opened: bool,
}

impl Encoder {
    pub fn new(model: &str) -> Self {
        Self {
            id: new_id("chatcmpl"),
            model: model.to_string(),
            created: now_secs(),
            calls: Vec::new(),
            stop: None,
            usage: None,
            opened: false,
        }
    }

    fn chunk(&mut self, delta: Value, finish: Option<&str>) -> Bytes {
        let mut delta = delta;
        if !self.opened {
            self.opened = true;
            if let Some(fields) = delta.as_object_mut() {
                fields.insert("role".into(), Value::String("assistant".into()));
            }
        }
        let chunk = json!({
            "id": self.id, "object": "chat.completion.chunk", "created": self.created, "model": self.model,
            "choices": [{"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish}],
        });
        frame(None, &chunk.to_string())
    }
}

impl super::Encoder for Encoder {
    fn encode(&mut self, event: &Event) -> Vec<Bytes> {
        match event {
            Event::Text { delta, .. } => vec![self.chunk(json!({"content": delta}), None)],
            Event::Reasoning { delta, .. } => vec![self.chunk(json!({"reasoning_content": delta}), None)],
            Event::ToolCallStart { block, id, name } => {
                let index = self.calls.len();
                self.calls.push(*block);
                let call =
                    json!({"index": index, "id": id, "type": "function", "function": {"name": name, "arguments": ""}});
                vec![self.chunk(json!({"tool_calls": [call]}), None)]
            }
            Event::ToolCallArguments { block, delta } => {
                let index = self.calls.iter().position(|b| b == block).unwrap_or(0);
                let call = json!({"index": index, "function": {"arguments": delta}});
                vec![self.chunk(json!({"tool_calls": [call]}), None)]
            }
            Event::Usage(tokens) => {
                self.usage.get_or_insert_with(Tokens::default).merge(tokens);
                Vec::new()
            }
            Event::Finish { stop } => {
                self.stop = Some(*stop);
                Vec::new()
            }
            Event::Error { message } => {
                vec![frame(None, &json!({"error": {"message": message, "type": "upstream_error"}}).to_string())]
            }
            _ => Vec::new(),
        }
    }

    fn end(&mut self) -> Vec<Bytes> {
        let mut out = Vec::new();
        let reason = reason_of(self.stop.unwrap_or(Stop::End));
        out.push(self.chunk(Value::Object(Map::new()), Some(reason)));
        if let Some(usage) = &self.usage {
            let chunk = json!({
                "id": self.id, "object": "chat.completion.chunk", "created": self.created, "model": self.model,
                "choices": [], "usage": usage_json(usage),
            });
            out.push(frame(None, &chunk.to_string()));
        }
        out.push(frame(None, "[DONE]"));
        out
    }
}
