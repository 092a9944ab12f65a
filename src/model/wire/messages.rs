//! Anthropic Messages (`POST /v1/messages`).

use bytes::Bytes;
use serde_json::{json, Value};

use super::sse::{frame, SseEvent};
use super::{
    new_id, schema, stop_sequences, text, Conversation, Event, Message, OutputFormat, Part, Reply, Role, Stop, Tool,
    ToolChoice,
};
use crate::model::usage::Tokens;
use crate::model::ProviderKind;

/// Reads a client's Messages request.
pub fn read_request(body: &Value) -> Result<Conversation, String> {
    let mut conversation = Conversation::default();
    match body.get("system") {
        Some(Value::String(system)) => conversation.system.push(system.clone()),
        Some(Value::Array(blocks)) => {
            conversation.system.extend(blocks.iter().filter_map(|b| text(b, "text")).map(str::to_string))
        }
        _ => {}
    }
    let messages = body.get("messages").and_then(Value::as_array).ok_or("`messages` must be an array")?;
    for message in messages {
        let role = match text(message, "role") {
            Some("user") => Role::User,
            Some("assistant") => Role::Assistant,
            // Claude Code sends instructions mid-conversation as `system` messages.
            Some("system") => Role::System,
            Some(other) => return Err(format!("unknown message role `{other}`")),
            None => return Err("each message needs a `role`".into()),
        };
        let parts = blocks(message.get("content"))?;
        conversation.messages.push(Message::new(role, parts));
    }
    for tool in body.get("tools").and_then(Value::as_array).into_iter().flatten() {
        let name = text(tool, "name").ok_or("each tool needs a `name`")?.to_string();
        // A typed tool other than `custom` is one Anthropic runs (web search, code
        // execution) or defines (bash, the text editor).
        let hosted = match text(tool, "type") {
            Some(kind) if kind != "custom" => Some((ProviderKind::Anthropic, tool.clone())),
            _ => None,
        };
        conversation.tools.push(Tool {
            name,
            description: text(tool, "description").map(str::to_string),
            parameters: schema(tool.get("input_schema")),
            namespace: None,
            hosted,
        });
    }
    if let Some(choice) = body.get("tool_choice") {
        conversation.tool_choice = match text(choice, "type") {
            Some("any") => Some(ToolChoice::Required),
            Some("none") => Some(ToolChoice::None),
            Some("tool") => text(choice, "name").map(|name| ToolChoice::Named(name.to_string())),
            _ => Some(ToolChoice::Auto),
        };
        if choice.get("disable_parallel_tool_use").and_then(Value::as_bool) == Some(true) {
            conversation.parallel_tool_calls = Some(false);
        }
    }
    conversation.max_output = body.get("max_tokens").and_then(Value::as_u64);
    conversation.temperature = body.get("temperature").and_then(Value::as_f64);
    conversation.top_p = body.get("top_p").and_then(Value::as_f64);
    conversation.stop = stop_sequences(body.get("stop_sequences"));
    conversation.reasoning_effort = body.pointer("/output_config/effort").and_then(Value::as_str).map(str::to_string);
    conversation.stream = body.get("stream").and_then(Value::as_bool) == Some(true);
    Ok(conversation)
}

/// A message's content: a string, or an array of blocks.
fn blocks(content: Option<&Value>) -> Result<Vec<Part>, String> {
    let list = match content {
        None | Some(Value::Null) => return Ok(Vec::new()),
        Some(Value::String(text)) => return Ok(vec![Part::Text(text.clone())]),
        Some(Value::Array(list)) => list,
        Some(_) => return Err("a message's `content` must be a string or an array".into()),
    };
    let mut parts = Vec::new();
    for block in list {
        match text(block, "type") {
            Some("text") => parts.push(Part::Text(text(block, "text").unwrap_or_default().to_string())),
            Some("image") => parts.extend(image(block)),
            Some("tool_use") => parts.push(Part::ToolCall {
                id: text(block, "id").unwrap_or_default().to_string(),
                name: text(block, "name").unwrap_or_default().to_string(),
                arguments: block.get("input").map_or_else(|| "{}".to_string(), Value::to_string),
            }),
            Some("tool_result") => parts.push(Part::ToolResult {
                id: text(block, "tool_use_id").unwrap_or_default().to_string(),
                name: None,
                // `tool_reference` blocks (tools loaded by search) mean nothing elsewhere.
                content: blocks(block.get("content"))?,
                is_error: block.get("is_error").and_then(Value::as_bool) == Some(true),
            }),
            Some("thinking") | Some("redacted_thinking") => {
                parts.push(Part::Opaque { wire: ProviderKind::Anthropic, value: block.clone() })
            }
            _ => {}
        }
    }
    Ok(parts)
}

fn image(block: &Value) -> Option<Part> {
    let source = block.get("source")?;
    match text(source, "type") {
        Some("base64") => Some(Part::Image(format!(
            "data:{};base64,{}",
            text(source, "media_type").unwrap_or("image/png"),
            text(source, "data").unwrap_or_default()
        ))),
        Some("url") => text(source, "url").map(|url| Part::Image(url.to_string())),
        _ => None,
    }
}

fn image_block(url: &str) -> Value {
    match url.strip_prefix("data:").and_then(|rest| rest.split_once(";base64,")) {
        Some((media_type, data)) => {
            json!({"type": "image", "source": {"type": "base64", "media_type": media_type, "data": data}})
        }
        None => json!({"type": "image", "source": {"type": "url", "url": url}}),
    }
}

/// A tool call's arguments as the JSON object Anthropic wants.
fn input(arguments: &str) -> Value {
    match serde_json::from_str::<Value>(arguments) {
        Ok(value @ Value::Object(_)) => value,
        _ => json!({}),
    }
}

fn content_blocks(parts: &[Part]) -> Vec<Value> {
    let mut results = Vec::new();
    let mut rest = Vec::new();
    for part in parts {
        match part {
            Part::ToolResult { id, content, is_error, .. } => {
                let mut block = json!({"type": "tool_result", "tool_use_id": id, "content": content_blocks(content)});
                if *is_error {
                    block["is_error"] = Value::Bool(true);
                }
                results.push(block);
            }
            Part::Text(text) if !text.is_empty() => rest.push(json!({"type": "text", "text": text})),
            Part::Image(url) => rest.push(image_block(url)),
            Part::ToolCall { id, name, arguments } => {
                rest.push(json!({"type": "tool_use", "id": id, "name": name, "input": input(arguments)}))
            }
            Part::Opaque { wire: ProviderKind::Anthropic, value } => rest.push(value.clone()),
            _ => {}
        }
    }
    // Tool results come first in their message.
    results.extend(rest);
    results
}

/// Writes a Messages request for `model`.
pub fn write_request(conversation: &Conversation, model: &str, default_max: u64) -> Value {
    let mut system = conversation.system.clone();
    match &conversation.output {
        Some(OutputFormat::JsonObject) => system.push("Answer with one JSON object and nothing else.".into()),
        Some(OutputFormat::JsonSchema { schema, .. }) => system
            .push(format!("Answer with one JSON object, and nothing else, that matches this JSON Schema: {schema}")),
        None => {}
    }
    let mut messages: Vec<Value> = Vec::new();
    for message in &conversation.messages {
        let (role, content) = match message.role {
            Role::User => ("user", content_blocks(&message.parts)),
            Role::Assistant => ("assistant", content_blocks(&message.parts)),
            Role::System => {
                let text: Vec<&str> = message.parts.iter().filter_map(Part::text).collect();
                ("user", vec![json!({"type": "text", "text": format!("<system>\n{}\n</system>", text.join("\n"))})])
            }
        };
        if content.is_empty() {
            continue;
        }
        // Consecutive messages of one role are one message.
        match messages.last_mut() {
            Some(last) if last["role"] == role => {
                if let Some(blocks) = last["content"].as_array_mut() {
                    blocks.extend(content);
                }
            }
            _ => messages.push(json!({"role": role, "content": content})),
        }
    }
    let mut out = json!({
        "model": model,
        "messages": messages,
        "max_tokens": conversation.max_output.unwrap_or(default_max),
    });
    if !system.is_empty() {
        out["system"] = Value::String(system.join("\n\n"));
    }
    let tools: Vec<Value> = conversation
        .tools
        .iter()
        .map(|tool| match &tool.hosted {
            Some((_, definition)) => definition.clone(),
            None => {
                let mut out = json!({"name": tool.name, "input_schema": tool.parameters});
                if let Some(description) = &tool.description {
                    out["description"] = Value::String(description.clone());
                }
                out
            }
        })
        .collect();
    if !tools.is_empty() {
        out["tools"] = Value::Array(tools);
        let mut choice = match &conversation.tool_choice {
            Some(ToolChoice::Required) => json!({"type": "any"}),
            Some(ToolChoice::None) => json!({"type": "none"}),
            Some(ToolChoice::Named(name)) => json!({"type": "tool", "name": name}),
            _ => json!({"type": "auto"}),
        };
        if conversation.parallel_tool_calls == Some(false) && choice["type"] != "none" {
            choice["disable_parallel_tool_use"] = Value::Bool(true);
        }
        if conversation.tool_choice.is_some() || conversation.parallel_tool_calls == Some(false) {
            out["tool_choice"] = choice;
        }
    }
    if let Some(temperature) = conversation.temperature {
        out["temperature"] = json!(temperature.min(1.0));
    }
    if let Some(top_p) = conversation.top_p {
        out["top_p"] = json!(top_p);
    }
    if !conversation.stop.is_empty() {
        out["stop_sequences"] = json!(conversation.stop);
    }
    if conversation.stream {
        out["stream"] = Value::Bool(true);
    }
    out
}

fn stop_of(reason: Option<&str>) -> Stop {
    match reason {
        Some("max_tokens") | Some("model_context_window_exceeded") => Stop::MaxTokens,
        Some("tool_use") => Stop::ToolUse,
        Some("refusal") => Stop::ContentFilter,
        _ => Stop::End,
    }
}

fn reason_of(stop: Stop) -> &'static str {
    match stop {
        Stop::End => "end_turn",
        Stop::MaxTokens => "max_tokens",
        Stop::ToolUse => "tool_use",
        Stop::ContentFilter => "refusal",
    }
}

/// Usage in Messages' shape: input counts cache reads and writes too.
pub fn tokens(usage: &Value) -> Tokens {
    let number = |key: &str| usage.get(key).and_then(Value::as_u64).unwrap_or(0);
    let cached = number("cache_read_input_tokens");
    Tokens {
        input: number("input_tokens") + cached + number("cache_creation_input_tokens"),
        output: number("output_tokens"),
        cached,
    }
}

fn usage_json(tokens: &Tokens) -> Value {
    json!({
        "input_tokens": tokens.input.saturating_sub(tokens.cached),
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": tokens.cached,
        "output_tokens": tokens.output,
    })
}

/// Reads a provider's whole Messages answer.
pub fn read_reply(body: &Value) -> Reply {
    let parts = blocks(body.get("content")).unwrap_or_default();
    Reply {
        id: text(body, "id").unwrap_or_default().to_string(),
        model: text(body, "model").unwrap_or_default().to_string(),
        parts,
        stop: stop_of(text(body, "stop_reason")),
        usage: body.get("usage").filter(|u| u.is_object()).map(tokens),
    }
}

/// Writes a whole Messages answer.
pub fn write_reply(reply: &Reply) -> Value {
    let content: Vec<Value> = content_blocks(&reply.parts);
    json!({
        "id": if reply.id.starts_with("msg_") { reply.id.clone() } else { new_id("msg") },
        "type": "message",
        "role": "assistant",
        "model": reply.model,
        "content": content,
        "stop_reason": reason_of(reply.stop),
        "stop_sequence": null,
        "usage": usage_json(&reply.usage.unwrap_or_default()),
    })
}

/// Reads a Messages stream.
#[derive(Debug, Default)]
pub struct Decoder {
    /// The thinking block being streamed: its text and signature, kept whole.
    thinking: Option<(usize, Value)>,
    stop: Option<Stop>,
    done: bool,
}

impl super::Decoder for Decoder {
    fn decode(&mut self, event: &SseEvent) -> Vec<Event> {
        let mut out = Vec::new();
        let Ok(value) = serde_json::from_str::<Value>(&event.data) else { return out };
        let block = value.get("index").and_then(Value::as_u64).unwrap_or(0) as usize;
        match text(&value, "type") {
            Some("message_start") => {
                let message = value.get("message").cloned().unwrap_or(Value::Null);
                out.push(Event::Start {
                    id: text(&message, "id").unwrap_or_default().to_string(),
                    model: text(&message, "model").unwrap_or_default().to_string(),
                });
                if let Some(usage) = message.get("usage").filter(|u| u.is_object()) {
                    out.push(Event::Usage(tokens(usage)));
                }
            }
            Some("content_block_start") => {
                let content = value.get("content_block").cloned().unwrap_or(Value::Null);
                match text(&content, "type") {
                    Some("text") => {
                        out.push(Event::TextStart { block });
                        if let Some(text) = text(&content, "text").filter(|t| !t.is_empty()) {
                            out.push(Event::Text { block, delta: text.to_string() });
                        }
                    }
                    Some("tool_use") | Some("server_tool_use") => out.push(Event::ToolCallStart {
                        block,
                        id: text(&content, "id").unwrap_or_default().to_string(),
                        name: text(&content, "name").unwrap_or_default().to_string(),
                    }),
                    Some("thinking") | Some("redacted_thinking") => {
                        out.push(Event::ReasoningStart { block });
                        self.thinking = Some((block, content));
                    }
                    _ => {}
                }
            }
            Some("content_block_delta") => {
                let delta = value.get("delta").cloned().unwrap_or(Value::Null);
                match text(&delta, "type") {
                    Some("text_delta") => {
                        out.push(Event::Text { block, delta: text(&delta, "text").unwrap_or_default().to_string() })
                    }
                    Some("input_json_delta") => out.push(Event::ToolCallArguments {
                        block,
                        delta: text(&delta, "partial_json").unwrap_or_default().to_string(),
                    }),
                    Some("thinking_delta") => {
                        let piece = text(&delta, "thinking").unwrap_or_default();
                        if let Some((_, whole)) = self.thinking.as_mut() {
                            let so_far = whole["thinking"].as_str().unwrap_or_default().to_string();
                            whole["thinking"] = Value::String(so_far + piece);
                        }
                        out.push(Event::Reasoning { block, delta: piece.to_string() });
                    }
                    Some("signature_delta") => {
                        if let Some((_, whole)) = self.thinking.as_mut() {
                            whole["signature"] = delta.get("signature").cloned().unwrap_or(Value::Null);
                        }
                    }
                    _ => {}
                }
            }
            Some("content_block_stop") => {
                if let Some((at, whole)) = self.thinking.take() {
                    if at == block {
                        out.push(Event::Opaque {
                            block,
                            part: Part::Opaque { wire: ProviderKind::Anthropic, value: whole },
                        });
                    }
                }
                out.push(Event::BlockEnd { block });
            }
            Some("message_delta") => {
                if let Some(usage) = value.get("usage").filter(|u| u.is_object()) {
                    let mut tokens = tokens(usage);
                    // Only what it carries: a delta without input tokens keeps the start's.
                    if usage.get("input_tokens").is_none() {
                        tokens.input = 0;
                    }
                    out.push(Event::Usage(tokens));
                }
                if let Some(reason) = value.pointer("/delta/stop_reason").and_then(Value::as_str) {
                    self.stop = Some(stop_of(Some(reason)));
                    out.push(Event::Finish { stop: stop_of(Some(reason)) });
                }
            }
            Some("message_stop") => self.done = true,
            Some("error") => out.push(Event::Error {
                message: value
                    .pointer("/error/message")
                    .and_then(Value::as_str)
                    .unwrap_or("the provider failed")
                    .to_string(),
            }),
            _ => {}
        }
        out
    }

    fn finished(&self) -> bool {
        self.done
    }
}

/// Writes a Messages stream (with `event:` lines, which Anthropic's SDKs need).
pub struct Encoder {
    id: String,
    model: String,
    /// Each of our blocks that is a Messages block, by its Messages index.
    blocks: Vec<usize>,
    stop: Option<Stop>,
    usage: Tokens,
    started: bool,
}

impl Encoder {
    pub fn new(model: &str) -> Self {
        Self {
            id: new_id("msg"),
            model: model.to_string(),
            blocks: Vec::new(),
            stop: None,
            usage: Tokens::default(),
            started: false,
        }
    }

    fn event(name: &str, data: Value) -> Bytes {
        frame(Some(name), &data.to_string())
    }

    fn start(&mut self) -> Vec<Bytes> {
        if self.started {
            return Vec::new();
        }
        self.started = true;
        vec![Self::event(
            "message_start",
            json!({"type": "message_start", "message": {
                "id": self.id, "type": "message", "role": "assistant", "model": self.model, "content": [],
                "stop_reason": null, "stop_sequence": null, "usage": usage_json(&self.usage),
            }}),
        )]
    }

    fn index(&self, block: usize) -> Option<usize> {
        self.blocks.iter().position(|b| *b == block)
    }
}

impl super::Encoder for Encoder {
    fn encode(&mut self, event: &Event) -> Vec<Bytes> {
        let mut out = Vec::new();
        match event {
            Event::Start { .. } => out.extend(self.start()),
            Event::TextStart { block } => {
                out.extend(self.start());
                self.blocks.push(*block);
                let index = self.blocks.len() - 1;
                out.push(Self::event(
                    "content_block_start",
                    json!({"type": "content_block_start", "index": index, "content_block": {"type": "text", "text": ""}}),
                ));
            }
            Event::Text { block, delta } => {
                if let Some(index) = self.index(*block) {
                    out.push(Self::event(
                        "content_block_delta",
                        json!({"type": "content_block_delta", "index": index, "delta": {"type": "text_delta", "text": delta}}),
                    ));
                }
            }
            Event::ToolCallStart { block, id, name } => {
                out.extend(self.start());
                self.blocks.push(*block);
                let index = self.blocks.len() - 1;
                out.push(Self::event(
                    "content_block_start",
                    json!({"type": "content_block_start", "index": index,
                        "content_block": {"type": "tool_use", "id": id, "name": name, "input": {}}}),
                ));
            }
            Event::ToolCallArguments { block, delta } => {
                if let Some(index) = self.index(*block) {
                    out.push(Self::event(
                        "content_block_delta",
                        json!({"type": "content_block_delta", "index": index, "delta": {"type": "input_json_delta", "partial_json": delta}}),
                    ));
                }
            }
            Event::BlockEnd { block } => {
                if let Some(index) = self.index(*block) {
                    out.push(Self::event("content_block_stop", json!({"type": "content_block_stop", "index": index})));
                }
            }
            Event::Usage(tokens) => {
                self.usage.merge(tokens);
            }
            Event::Finish { stop } => self.stop = Some(*stop),
            Event::Error { message } => out.push(Self::event(
                "error",
                json!({"type": "error", "error": {"type": "api_error", "message": message}}),
            )),
            _ => {}
        }
        out
    }

    fn end(&mut self) -> Vec<Bytes> {
        let mut out = self.start();
        out.push(Self::event(
            "message_delta",
            json!({"type": "message_delta",
                "delta": {"stop_reason": reason_of(self.stop.unwrap_or(Stop::End)), "stop_sequence": null},
                "usage": usage_json(&self.usage)}),
        ));
        out.push(Self::event("message_stop", json!({"type": "message_stop"})));
        out
    }
}
