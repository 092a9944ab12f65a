//! OpenAI Responses (`POST /v1/responses`), stateless, as Codex uses it: the whole
//! transcript in `input` on every turn, `store: false`, MCP tools grouped in
//! `namespace` tools.

use bytes::Bytes;
use serde_json::{json, Value};

use super::sse::{frame, SseEvent};
use super::{
    new_id, now_secs, result_text, schema, text, Conversation, Event, Message, OutputFormat, Part, Reply, Role, Stop,
    Tool, ToolChoice,
};
use crate::model::usage::Tokens;
use crate::model::ProviderKind;

/// The name a namespaced tool is called by in formats without namespaces.
pub fn joined(namespace: &str, name: &str) -> String {
    format!("{namespace}__{name}")
}

/// Reads a client's Responses request.
pub fn read_request(body: &Value) -> Result<Conversation, String> {
    let mut conversation = Conversation::default();
    if let Some(instructions) = text(body, "instructions").filter(|i| !i.is_empty()) {
        conversation.system.push(instructions.to_string());
    }
    for tool in body.get("tools").and_then(Value::as_array).into_iter().flatten() {
        match text(tool, "type") {
            Some("function") => conversation.tools.push(function_tool(tool, None)?),
            Some("namespace") => {
                let namespace = text(tool, "name").ok_or("a `namespace` tool needs a `name`")?;
                for inner in tool.get("tools").and_then(Value::as_array).into_iter().flatten() {
                    conversation.tools.push(function_tool(inner, Some(namespace))?);
                }
            }
            Some(kind) => conversation.tools.push(Tool {
                name: text(tool, "name").unwrap_or(kind).to_string(),
                description: None,
                parameters: schema(None),
                namespace: None,
                hosted: Some((ProviderKind::Responses, tool.clone())),
            }),
            None => return Err("each tool needs a `type`".into()),
        }
    }
    let name_of = |item: &Value| -> String {
        let name = text(item, "name").unwrap_or_default();
        match text(item, "namespace") {
            Some(namespace) => joined(namespace, name),
            None => name.to_string(),
        }
    };
    match body.get("input") {
        Some(Value::String(input)) => {
            conversation.messages.push(Message::new(Role::User, vec![Part::Text(input.clone())]));
        }
        Some(Value::Array(items)) => {
            for item in items {
                let kind = text(item, "type").unwrap_or(if item.get("role").is_some() { "message" } else { "" });
                match kind {
                    "message" => {
                        let parts = content_parts(item.get("content"));
                        match text(item, "role") {
                            Some("developer") | Some("system") => {
                                let text: Vec<&str> = parts.iter().filter_map(Part::text).collect();
                                if conversation.messages.is_empty() {
                                    conversation.system.push(text.join("\n"));
                                } else {
                                    push(&mut conversation, Role::System, Part::Text(text.join("\n")));
                                }
                            }
                            Some("assistant") => {
                                parts.into_iter().for_each(|p| push(&mut conversation, Role::Assistant, p))
                            }
                            _ => parts.into_iter().for_each(|p| push(&mut conversation, Role::User, p)),
                        }
                    }
                    "function_call" => push(
                        &mut conversation,
                        Role::Assistant,
                        Part::ToolCall {
                            id: text(item, "call_id").unwrap_or_default().to_string(),
                            name: name_of(item),
                            arguments: text(item, "arguments").unwrap_or("{}").to_string(),
                        },
                    ),
                    "function_call_output" => {
                        let content = match item.get("output") {
                            Some(Value::String(output)) => vec![Part::Text(output.clone())],
                            other => content_parts(other),
                        };
                        push(
                            &mut conversation,
                            Role::User,
                            Part::ToolResult {
                                id: text(item, "call_id").unwrap_or_default().to_string(),
                                name: None,
                                content,
                                is_error: false,
                            },
                        );
                    }
                    "item_reference" => {}
                    // Reasoning, compaction, hosted tools' calls: only a Responses
                    // provider reads them.
                    _ => push(
                        &mut conversation,
                        Role::Assistant,
                        Part::Opaque { wire: ProviderKind::Responses, value: item.clone() },
                    ),
                }
            }
        }
        _ => return Err("`input` must be a string or an array of items".into()),
    }
    conversation.tool_choice = match body.get("tool_choice") {
        Some(Value::String(choice)) => Some(match choice.as_str() {
            "none" => ToolChoice::None,
            "required" => ToolChoice::Required,
            _ => ToolChoice::Auto,
        }),
        Some(choice @ Value::Object(_)) => text(choice, "name").map(|name| ToolChoice::Named(name.to_string())),
        _ => None,
    };
    conversation.parallel_tool_calls = body.get("parallel_tool_calls").and_then(Value::as_bool);
    conversation.max_output = body.get("max_output_tokens").and_then(Value::as_u64);
    conversation.temperature = body.get("temperature").and_then(Value::as_f64);
    conversation.top_p = body.get("top_p").and_then(Value::as_f64);
    conversation.output = match body.pointer("/text/format/type").and_then(Value::as_str) {
        Some("json_object") => Some(OutputFormat::JsonObject),
        Some("json_schema") => {
            let format = body.pointer("/text/format").cloned().unwrap_or(Value::Null);
            Some(OutputFormat::JsonSchema {
                name: text(&format, "name").unwrap_or("output").to_string(),
                schema: schema(format.get("schema")),
                strict: format.get("strict").and_then(Value::as_bool),
            })
        }
        _ => None,
    };
    conversation.reasoning_effort = body.pointer("/reasoning/effort").and_then(Value::as_str).map(str::to_string);
    conversation.stream = body.get("stream").and_then(Value::as_bool) == Some(true);
    Ok(conversation)
}

fn function_tool(tool: &Value, namespace: Option<&str>) -> Result<Tool, String> {
    let name = text(tool, "name").ok_or("each function tool needs a `name`")?;
    Ok(Tool {
        name: namespace.map_or_else(|| name.to_string(), |ns| joined(ns, name)),
        description: text(tool, "description").map(str::to_string),
        parameters: schema(tool.get("parameters")),
        namespace: namespace.map(|ns| (ns.to_string(), name.to_string())),
        hosted: None,
    })
}

/// Adds `part` to the conversation's last message when it has `role`, else to a new one.
fn push(conversation: &mut Conversation, role: Role, part: Part) {
    match conversation.messages.last_mut() {
        Some(last) if last.role == role && !(role == Role::User && starts_turn(&part, last)) => last.parts.push(part),
        _ => conversation.messages.push(Message::new(role, vec![part])),
    }
}

/// Whether `part` begins a new user turn after `last` (text after tool results).
fn starts_turn(part: &Part, last: &Message) -> bool {
    matches!(part, Part::Text(_) | Part::Image(_)) && last.parts.iter().any(|p| matches!(p, Part::ToolResult { .. }))
}

fn content_parts(content: Option<&Value>) -> Vec<Part> {
    match content {
        Some(Value::String(text)) => vec![Part::Text(text.clone())],
        Some(Value::Array(parts)) => parts
            .iter()
            .filter_map(|part| match text(part, "type") {
                Some("input_text") | Some("output_text") | Some("text") => {
                    text(part, "text").map(|t| Part::Text(t.to_string()))
                }
                Some("refusal") => text(part, "refusal").map(|t| Part::Text(t.to_string())),
                Some("input_image") => text(part, "image_url").map(|url| Part::Image(url.to_string())),
                _ => None,
            })
            .collect(),
        _ => Vec::new(),
    }
}

/// Writes a Responses request for `model`.
pub fn write_request(conversation: &Conversation, model: &str) -> Value {
    let mut input = Vec::new();
    for message in &conversation.messages {
        let mut content = Vec::new();
        let flush = |content: &mut Vec<Value>, input: &mut Vec<Value>| {
            if !content.is_empty() {
                let role = match message.role {
                    Role::System => "developer",
                    Role::User => "user",
                    Role::Assistant => "assistant",
                };
                input.push(json!({"type": "message", "role": role, "content": std::mem::take(content)}));
            }
        };
        for part in &message.parts {
            match part {
                Part::Text(text) => content.push(match message.role {
                    Role::Assistant => json!({"type": "output_text", "text": text}),
                    _ => json!({"type": "input_text", "text": text}),
                }),
                Part::Image(url) => content.push(json!({"type": "input_image", "image_url": url})),
                Part::ToolCall { id, name, arguments } => {
                    flush(&mut content, &mut input);
                    let mut item = json!({"type": "function_call", "call_id": id, "arguments": arguments});
                    match conversation.tool(name).and_then(|t| t.namespace.as_ref()) {
                        Some((namespace, inner)) => {
                            item["name"] = json!(inner);
                            item["namespace"] = json!(namespace);
                        }
                        None => item["name"] = json!(name),
                    }
                    input.push(item);
                }
                Part::ToolResult { id, content: result, .. } => {
                    flush(&mut content, &mut input);
                    input.push(json!({"type": "function_call_output", "call_id": id, "output": result_text(result)}));
                }
                Part::Opaque { wire: ProviderKind::Responses, value } => {
                    flush(&mut content, &mut input);
                    input.push(value.clone());
                }
                _ => {}
            }
        }
        flush(&mut content, &mut input);
    }
    let mut out = json!({"model": model, "input": input, "store": false});
    if !conversation.system.is_empty() {
        out["instructions"] = Value::String(conversation.system.join("\n\n"));
    }
    let mut tools: Vec<Value> = Vec::new();
    for tool in &conversation.tools {
        if let Some((_, definition)) = &tool.hosted {
            tools.push(definition.clone());
            continue;
        }
        let mut function = json!({"type": "function", "parameters": tool.parameters, "strict": false});
        if let Some(description) = &tool.description {
            function["description"] = Value::String(description.clone());
        }
        match &tool.namespace {
            Some((namespace, inner)) => {
                function["name"] = json!(inner);
                match tools.iter_mut().find(|t| t["type"] == "namespace" && t["name"] == namespace.as_str()) {
                    Some(group) => group["tools"].as_array_mut().into_iter().for_each(|t| t.push(function.clone())),
                    None => tools.push(json!({"type": "namespace", "name": namespace, "tools": [function]})),
                }
            }
            None => {
                function["name"] = json!(tool.name);
                tools.push(function);
            }
        }
    }
    if !tools.is_empty() {
        out["tools"] = Value::Array(tools);
        if let Some(choice) = &conversation.tool_choice {
            out["tool_choice"] = match choice {
                ToolChoice::Auto => json!("auto"),
                ToolChoice::None => json!("none"),
                ToolChoice::Required => json!("required"),
                ToolChoice::Named(name) => json!({"type": "function", "name": name}),
            };
        }
        if let Some(parallel) = conversation.parallel_tool_calls {
            out["parallel_tool_calls"] = Value::Bool(parallel);
        }
    }
    if let Some(max) = conversation.max_output {
        out["max_output_tokens"] = json!(max);
    }
    if let Some(temperature) = conversation.temperature {
        out["temperature"] = json!(temperature);
    }
    if let Some(top_p) = conversation.top_p {
        out["top_p"] = json!(top_p);
    }
    match &conversation.output {
        Some(OutputFormat::JsonObject) => out["text"] = json!({"format": {"type": "json_object"}}),
        Some(OutputFormat::JsonSchema { name, schema, strict }) => {
            let mut format = json!({"type": "json_schema", "name": name, "schema": schema});
            if let Some(strict) = strict {
                format["strict"] = Value::Bool(*strict);
            }
            out["text"] = json!({ "format": format });
        }
        None => {}
    }
    if let Some(effort) = &conversation.reasoning_effort {
        out["reasoning"] = json!({ "effort": effort });
    }
    if conversation.stream {
        out["stream"] = Value::Bool(true);
    }
    out
}

/// Usage in Responses' shape.
pub fn tokens(usage: &Value) -> Tokens {
    let number = |pointer: &str| usage.pointer(pointer).and_then(Value::as_u64).unwrap_or(0);
    Tokens {
        input: number("/input_tokens"),
        output: number("/output_tokens"),
        cached: number("/input_tokens_details/cached_tokens"),
    }
}

fn usage_json(tokens: &Tokens) -> Value {
    json!({
        "input_tokens": tokens.input,
        "input_tokens_details": {"cached_tokens": tokens.cached},
        "output_tokens": tokens.output,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": tokens.input + tokens.output,
    })
}

/// The parts of one output item.
fn item_parts(item: &Value) -> Vec<Part> {
    match text(item, "type") {
        Some("message") => content_parts(item.get("content")),
        Some("function_call") => {
            let name = text(item, "name").unwrap_or_default();
            vec![Part::ToolCall {
                id: text(item, "call_id").unwrap_or_default().to_string(),
                name: text(item, "namespace").map_or_else(|| name.to_string(), |ns| joined(ns, name)),
                arguments: text(item, "arguments").unwrap_or("{}").to_string(),
            }]
        }
        _ => vec![Part::Opaque { wire: ProviderKind::Responses, value: item.clone() }],
    }
}

/// Reads a provider's whole Responses answer.
pub fn read_reply(body: &Value) -> Reply {
    let parts: Vec<Part> =
        body.get("output").and_then(Value::as_array).into_iter().flatten().flat_map(item_parts).collect();
    let stop = if text(body, "status") == Some("incomplete") {
        Stop::MaxTokens
    } else if parts.iter().any(|p| matches!(p, Part::ToolCall { .. })) {
        Stop::ToolUse
    } else {
        Stop::End
    };
    Reply {
        id: text(body, "id").unwrap_or_default().to_string(),
        model: text(body, "model").unwrap_or_default().to_string(),
        parts,
        stop,
        usage: body.get("usage").filter(|u| u.is_object()).map(tokens),
    }
}

/// A function call as an output item, its name split back into the namespace the
/// client's tool had.
fn call_item(request: &Conversation, id: &str, name: &str, arguments: &str, status: &str) -> Value {
    let mut item =
        json!({"id": new_id("fc"), "type": "function_call", "status": status, "arguments": arguments, "call_id": id});
    match request.tool(name).and_then(|t| t.namespace.as_ref()) {
        Some((namespace, inner)) => {
            item["name"] = json!(inner);
            item["namespace"] = json!(namespace);
        }
        None => item["name"] = json!(name),
    }
    item
}

fn message_item(id: &str, text: &str, status: &str) -> Value {
    let content = if status == "in_progress" {
        json!([])
    } else {
        json!([{"type": "output_text", "text": text, "annotations": []}])
    };
    json!({"id": id, "type": "message", "status": status, "role": "assistant", "content": content})
}

fn response(id: &str, model: &str, status: &str, output: Vec<Value>, usage: Option<&Tokens>, created: u64) -> Value {
    let mut out = json!({
        "id": id, "object": "response", "created_at": created, "status": status, "model": model,
        "output": output, "parallel_tool_calls": true, "tool_choice": "auto", "tools": [],
        "error": null, "incomplete_details": null, "metadata": {}, "store": false,
        "usage": usage.map(usage_json),
    });
    if status == "incomplete" {
        out["incomplete_details"] = json!({"reason": "max_output_tokens"});
    }
    out
}

/// Writes a whole Responses answer to `request`.
pub fn write_reply(reply: &Reply, request: &Conversation) -> Value {
    let mut output = Vec::new();
    let text = reply.text();
    if !text.is_empty() {
        output.push(message_item(&new_id("msg"), &text, "completed"));
    }
    for part in &reply.parts {
        match part {
            Part::ToolCall { id, name, arguments } => output.push(call_item(request, id, name, arguments, "completed")),
            Part::Opaque { wire: ProviderKind::Responses, value } => output.push(value.clone()),
            _ => {}
        }
    }
    let status = if reply.stop == Stop::MaxTokens { "incomplete" } else { "completed" };
    let id = if reply.id.starts_with("resp_") { reply.id.clone() } else { new_id("resp") };
    response(&id, &reply.model, status, output, Some(&reply.usage.unwrap_or_default()), now_secs())
}

/// Reads a Responses stream.
#[derive(Debug, Default)]
pub struct Decoder {
    /// For each output index: its block, what it is, and whether deltas came.
    items: Vec<(u64, usize, ItemKind, bool)>,
    next_block: usize,
    calls: bool,
    done: bool,
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum ItemKind {
    Message,
    Call,
    Reasoning,
    Other,
}

impl Decoder {
    fn item(&mut self, index: u64) -> Option<&mut (u64, usize, ItemKind, bool)> {
        self.items.iter_mut().find(|(i, ..)| *i == index)
    }

    fn open(&mut self, index: u64, kind: ItemKind) -> usize {
        let block = self.next_block;
        self.next_block += 1;
        self.items.push((index, block, kind, false));
        block
    }
}

impl super::Decoder for Decoder {
    fn decode(&mut self, event: &SseEvent) -> Vec<Event> {
        let mut out = Vec::new();
        let Ok(value) = serde_json::from_str::<Value>(&event.data) else { return out };
        let index = value.get("output_index").and_then(Value::as_u64).unwrap_or(0);
        let kind_of = |item: &Value| match text(item, "type") {
            Some("message") => ItemKind::Message,
            Some("function_call") => ItemKind::Call,
            Some("reasoning") => ItemKind::Reasoning,
            _ => ItemKind::Other,
        };
        let call_start = |block: usize, item: &Value| {
            let name = text(item, "name").unwrap_or_default();
            Event::ToolCallStart {
                block,
                id: text(item, "call_id").unwrap_or_default().to_string(),
                name: text(item, "namespace").map_or_else(|| name.to_string(), |ns| joined(ns, name)),
            }
        };
        match text(&value, "type") {
            Some("response.created") => out.push(Event::Start {
                id: value.pointer("/response/id").and_then(Value::as_str).unwrap_or_default().to_string(),
                model: value.pointer("/response/model").and_then(Value::as_str).unwrap_or_default().to_string(),
            }),
            Some("response.output_item.added") => {
                let item = value.get("item").cloned().unwrap_or(Value::Null);
                let kind = kind_of(&item);
                let block = self.open(index, kind);
                match kind {
                    ItemKind::Message => out.push(Event::TextStart { block }),
                    ItemKind::Call => {
                        self.calls = true;
                        out.push(call_start(block, &item));
                    }
                    ItemKind::Reasoning => out.push(Event::ReasoningStart { block }),
                    ItemKind::Other => {}
                }
            }
            Some("response.output_text.delta") => {
                if let Some((_, block, _, seen)) = self.item(index) {
                    *seen = true;
                    out.push(Event::Text {
                        block: *block,
                        delta: text(&value, "delta").unwrap_or_default().to_string(),
                    });
                }
            }
            Some("response.function_call_arguments.delta") => {
                if let Some((_, block, _, seen)) = self.item(index) {
                    *seen = true;
                    let delta = text(&value, "delta").unwrap_or_default().to_string();
                    out.push(Event::ToolCallArguments { block: *block, delta });
                }
            }
            Some("response.reasoning_summary_text.delta") | Some("response.reasoning_text.delta") => {
                if let Some((_, block, ..)) = self.item(index) {
                    out.push(Event::Reasoning {
                        block: *block,
                        delta: text(&value, "delta").unwrap_or_default().to_string(),
                    });
                }
            }
            Some("response.output_item.done") => {
                let item = value.get("item").cloned().unwrap_or(Value::Null);
                let kind = kind_of(&item);
                // A stream may send an item only when it is done (no `added`, no deltas).
                let (block, seen) = match self.item(index) {
                    Some((_, block, _, seen)) => (*block, *seen),
                    None => {
                        let block = self.open(index, kind);
                        match kind {
                            ItemKind::Message => out.push(Event::TextStart { block }),
                            ItemKind::Call => {
                                self.calls = true;
                                out.push(call_start(block, &item));
                            }
                            _ => {}
                        }
                        (block, false)
                    }
                };
                match kind {
                    ItemKind::Message if !seen => {
                        let text: String = content_parts(item.get("content")).iter().filter_map(Part::text).collect();
                        out.push(Event::Text { block, delta: text });
                    }
                    ItemKind::Call if !seen => out.push(Event::ToolCallArguments {
                        block,
                        delta: text(&item, "arguments").unwrap_or_default().to_string(),
                    }),
                    ItemKind::Reasoning | ItemKind::Other => out.push(Event::Opaque {
                        block,
                        part: Part::Opaque { wire: ProviderKind::Responses, value: item },
                    }),
                    _ => {}
                }
                out.push(Event::BlockEnd { block });
            }
            Some(kind @ ("response.completed" | "response.incomplete")) => {
                if let Some(usage) = value.pointer("/response/usage").filter(|u| u.is_object()) {
                    out.push(Event::Usage(tokens(usage)));
                }
                let stop = if kind == "response.incomplete" {
                    Stop::MaxTokens
                } else if self.calls {
                    Stop::ToolUse
                } else {
                    Stop::End
                };
                out.push(Event::Finish { stop });
                self.done = true;
            }
            Some("response.failed") | Some("error") => {
                let message = value
                    .pointer("/response/error/message")
                    .or_else(|| value.get("message"))
                    .and_then(Value::as_str)
                    .unwrap_or("the provider failed");
                out.push(Event::Error { message: message.to_string() });
            }
            _ => {}
        }
        out
    }

    fn finished(&self) -> bool {
        self.done
    }
}

/// One output item being written.
struct Item {
    block: usize,
    index: usize,
    id: String,
    /// A function call's id, name and arguments so far; else the message's text.
    call: Option<(String, String)>,
    text: String,
    done: Option<Value>,
}

/// Writes a Responses stream, in the order and shape Codex reads.
pub struct Encoder {
    request: Conversation,
    id: String,
    model: String,
    created: u64,
    sequence: u64,
    items: Vec<Item>,
    usage: Option<Tokens>,
    stop: Option<Stop>,
    failed: Option<String>,
}

impl Encoder {
    pub fn new(request: &Conversation, model: &str) -> Self {
        // Only the tool table is needed to split names back into namespaces.
        let request = Conversation { tools: request.tools.clone(), ..Default::default() };
        Self {
            request,
            id: new_id("resp"),
            model: model.to_string(),
            created: now_secs(),
            sequence: 0,
            items: Vec::new(),
            usage: None,
            stop: None,
            failed: None,
        }
    }

    fn event(&mut self, kind: &str, mut data: Value) -> Bytes {
        data["type"] = json!(kind);
        data["sequence_number"] = json!(self.sequence);
        self.sequence += 1;
        frame(Some(kind), &data.to_string())
    }

    fn response(&self, status: &str) -> Value {
        let output = self.items.iter().filter_map(|item| item.done.clone()).collect();
        response(&self.id, &self.model, status, output, self.usage.as_ref(), self.created)
    }

    fn position(&self, block: usize) -> Option<usize> {
        self.items.iter().position(|item| item.block == block)
    }

    fn finish_item(&mut self, at: usize) -> Vec<Bytes> {
        let mut out = Vec::new();
        if self.items[at].done.is_some() {
            return out;
        }
        let (index, id) = (self.items[at].index, self.items[at].id.clone());
        let done = match self.items[at].call.clone() {
            Some((call_id, name)) => {
                let arguments = self.items[at].text.clone();
                out.push(self.event(
                    "response.function_call_arguments.done",
                    json!({"item_id": id, "output_index": index, "arguments": arguments}),
                ));
                let mut item = call_item(&self.request, &call_id, &name, &arguments, "completed");
                item["id"] = json!(id);
                item
            }
            None => {
                let text = self.items[at].text.clone();
                let part = json!({"type": "output_text", "text": text, "annotations": []});
                out.push(self.event(
                    "response.output_text.done",
                    json!({"item_id": id, "output_index": index, "content_index": 0, "text": text}),
                ));
                out.push(self.event(
                    "response.content_part.done",
                    json!({"item_id": id, "output_index": index, "content_index": 0, "part": part}),
                ));
                message_item(&id, &text, "completed")
            }
        };
        out.push(self.event("response.output_item.done", json!({"output_index": index, "item": done})));
        self.items[at].done = Some(done);
        out
    }
}

impl super::Encoder for Encoder {
    fn encode(&mut self, event: &Event) -> Vec<Bytes> {
        let mut out = Vec::new();
        match event {
            Event::Start { .. } => {
                let response = self.response("in_progress");
                out.push(self.event("response.created", json!({ "response": response })));
                out.push(self.event("response.in_progress", json!({ "response": response })));
            }
            Event::TextStart { block } => {
                let (index, id) = (self.items.len(), new_id("msg"));
                self.items.push(Item {
                    block: *block,
                    index,
                    id: id.clone(),
                    call: None,
                    text: String::new(),
                    done: None,
                });
                let item = message_item(&id, "", "in_progress");
                out.push(self.event("response.output_item.added", json!({"output_index": index, "item": item})));
                out.push(self.event(
                    "response.content_part.added",
                    json!({"item_id": id, "output_index": index, "content_index": 0,
                        "part": {"type": "output_text", "text": "", "annotations": []}}),
                ));
            }
            Event::Text { block, delta } => {
                if let Some(at) = self.position(*block) {
                    self.items[at].text.push_str(delta);
                    let (index, id) = (self.items[at].index, self.items[at].id.clone());
                    out.push(self.event(
                        "response.output_text.delta",
                        json!({"item_id": id, "output_index": index, "content_index": 0, "delta": delta, "logprobs": []}),
                    ));
                }
            }
            Event::ToolCallStart { block, id: call_id, name } => {
                let (index, id) = (self.items.len(), new_id("fc"));
                let mut item = call_item(&self.request, call_id, name, "", "in_progress");
                item["id"] = json!(id);
                self.items.push(Item {
                    block: *block,
                    index,
                    id,
                    call: Some((call_id.clone(), name.clone())),
                    text: String::new(),
                    done: None,
                });
                out.push(self.event("response.output_item.added", json!({"output_index": index, "item": item})));
            }
            Event::ToolCallArguments { block, delta } => {
                if let Some(at) = self.position(*block) {
                    self.items[at].text.push_str(delta);
                    let (index, id) = (self.items[at].index, self.items[at].id.clone());
                    out.push(self.event(
                        "response.function_call_arguments.delta",
                        json!({"item_id": id, "output_index": index, "delta": delta}),
                    ));
                }
            }
            Event::Opaque { part: Part::Opaque { wire: ProviderKind::Responses, value }, block } => {
                let index = self.items.len();
                let id = text(value, "id").map_or_else(|| new_id("rs"), str::to_string);
                self.items.push(Item {
                    block: *block,
                    index,
                    id,
                    call: None,
                    text: String::new(),
                    done: Some(value.clone()),
                });
                out.push(self.event("response.output_item.added", json!({"output_index": index, "item": value})));
                out.push(self.event("response.output_item.done", json!({"output_index": index, "item": value})));
            }
            Event::BlockEnd { block } => {
                if let Some(at) = self.position(*block) {
                    out.extend(self.finish_item(at));
                }
            }
            Event::Usage(tokens) => {
                self.usage.get_or_insert_with(Tokens::default).merge(tokens);
            }
            Event::Finish { stop } => self.stop = Some(*stop),
            Event::Error { message } => self.failed = Some(message.clone()),
            _ => {}
        }
        out
    }

    fn end(&mut self) -> Vec<Bytes> {
        let mut out = Vec::new();
        for at in 0..self.items.len() {
            out.extend(self.finish_item(at));
        }
        if let Some(message) = self.failed.take() {
            let mut response = self.response("failed");
            response["error"] = json!({"code": "server_error", "message": message});
            out.push(self.event("response.failed", json!({ "response": response })));
            return out;
        }
        let (kind, status) = match self.stop {
            Some(Stop::MaxTokens) => ("response.incomplete", "incomplete"),
            _ => ("response.completed", "completed"),
        };
        let mut response = self.response(status);
        response["completed_at"] = json!(now_secs());
        out.push(self.event(kind, json!({ "response": response })));
        out
    }
}
