//! The four wire formats of model APIs, and one conversation between them.
//!
//! A client speaks one format (its route) and a model's provider speaks one. When
//! they are the same, the request and its answer pass through untouched. When they
//! differ, the request is read into a [`Conversation`], written out in the
//! provider's format, and the provider's answer comes back the same way: a whole
//! answer as a [`Reply`], a stream as [`Event`]s, each re-written in the client's
//! format as it arrives. Every format has a module with the same six pieces:
//!
//! | piece | from | to |
//! |---|---|---|
//! | `read_request` | the client's body | [`Conversation`] |
//! | `write_request` | [`Conversation`] | the provider's body |
//! | `read_reply` | the provider's whole answer | [`Reply`] |
//! | `write_reply` | [`Reply`] | the client's whole answer |
//! | `Decoder` | the provider's stream | [`Event`]s |
//! | `Encoder` | [`Event`]s | the client's stream |
//!
//! Decoders also meter passed-through streams (usage, text), so every stream, native
//! or translated, is read by the same code.
//!
//! What cannot cross is said, not guessed: a hosted tool (`web_search`) goes only to
//! a provider of the format that has it, else the request is refused naming it; a
//! provider's opaque reasoning (encrypted content, signatures) goes back only to a
//! provider of the format that made it, and is dropped on the way anywhere else.

pub mod chat;
pub mod gemini;
pub mod messages;
pub mod responses;
pub mod sse;

use serde_json::{json, Value};

use super::usage::Tokens;
use super::ProviderKind;
use crate::error::Kind;

/// Who says a message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// Instructions in the middle of a conversation (a `developer` or `system`
    /// message after the first turn).
    System,
    User,
    Assistant,
}

/// One piece of a message.
#[derive(Clone, Debug, PartialEq)]
pub enum Part {
    Text(String),
    /// An image: an `https:` URL or a `data:` URL.
    Image(String),
    /// A call the model made: its id, the tool's wire name, arguments as JSON text.
    ToolCall {
        id: String,
        name: String,
        arguments: String,
    },
    /// What a tool answered.
    ToolResult {
        id: String,
        name: Option<String>,
        content: Vec<Part>,
        is_error: bool,
    },
    /// Reasoning text the model showed (a summary, or thinking text).
    Reasoning(String),
    /// Something only the format it came from understands (encrypted reasoning, a
    /// signed thinking block, a compaction item), passed back only to it.
    Opaque {
        wire: ProviderKind,
        value: Value,
    },
}

impl Part {
    /// The text of a text part.
    pub fn text(&self) -> Option<&str> {
        match self {
            Part::Text(text) => Some(text),
            _ => None,
        }
    }
}

/// A message: a role and its parts.
#[derive(Clone, Debug, PartialEq)]
pub struct Message {
    pub role: Role,
    pub parts: Vec<Part>,
}

impl Message {
    pub fn new(role: Role, parts: Vec<Part>) -> Self {
        Self { role, parts }
    }
}

/// A tool the model may call.
#[derive(Clone, Debug, PartialEq)]
pub struct Tool {
    /// The name the model sees and calls (a namespaced tool's joined name).
    pub name: String,
    pub description: Option<String>,
    /// Its arguments' JSON Schema.
    pub parameters: Value,
    /// A Responses `namespace` tool's namespace and the tool's own name within it:
    /// the model calls `name`, the client gets back `namespace` and `inner`.
    pub namespace: Option<(String, String)>,
    /// A tool the provider runs itself (`web_search`, …): its definition as the
    /// client sent it, which only a provider of that format can take.
    pub hosted: Option<(ProviderKind, Value)>,
}

/// Which tool the model must call.
#[derive(Clone, Debug, PartialEq)]
pub enum ToolChoice {
    Auto,
    None,
    Required,
    Named(String),
}

/// A structured-output request.
#[derive(Clone, Debug, PartialEq)]
pub enum OutputFormat {
    JsonObject,
    JsonSchema { name: String, schema: Value, strict: Option<bool> },
}

/// A request, in no format.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Conversation {
    /// The instructions before the conversation.
    pub system: Vec<String>,
    pub messages: Vec<Message>,
    pub tools: Vec<Tool>,
    pub tool_choice: Option<ToolChoice>,
    pub parallel_tool_calls: Option<bool>,
    pub max_output: Option<u64>,
    pub temperature: Option<f64>,
    pub top_p: Option<f64>,
    pub stop: Vec<String>,
    pub output: Option<OutputFormat>,
    /// `low`, `medium`, `high` (the formats' reasoning effort).
    pub reasoning_effort: Option<String>,
    pub stream: bool,
}

impl Conversation {
    /// The tool a wire name stands for.
    pub fn tool(&self, name: &str) -> Option<&Tool> {
        self.tools.iter().find(|tool| tool.name == name)
    }

    /// Why only a provider of the client's own format can take this request: the
    /// first hosted tool (one the provider runs itself), named.
    pub fn hosted_refusal(&self) -> Option<String> {
        let (_, definition) = self.tools.iter().find_map(|tool| tool.hosted.as_ref())?;
        let kind = definition.get("type").and_then(Value::as_str).unwrap_or("hosted");
        Some(format!(
            "tool `{kind}` is run by the provider, and only a provider of this API's own format offers it; \
             remove it, or ask for a model whose provider speaks this format"
        ))
    }

    /// Drops the hosted tools whose type is in `names` (an operator's
    /// `router.drop_hosted_tools`), for a provider that cannot run them.
    pub fn drop_hosted(&mut self, names: &[String]) {
        self.tools.retain(|tool| match &tool.hosted {
            Some((_, definition)) => {
                let kind = definition.get("type").and_then(Value::as_str).unwrap_or(&tool.name);
                !names.iter().any(|name| name == kind)
            }
            None => true,
        });
    }

    /// Every text of the conversation, for counting tokens.
    pub fn text(&self) -> String {
        let mut out = self.system.join("\n");
        for message in &self.messages {
            for part in &message.parts {
                push_text(part, &mut out);
            }
        }
        for tool in &self.tools {
            out.push('\n');
            out.push_str(&tool.name);
            if let Some(description) = &tool.description {
                out.push('\n');
                out.push_str(description);
            }
            out.push('\n');
            out.push_str(&tool.parameters.to_string());
        }
        out
    }

    /// Whether any message carries an image.
    pub fn has_images(&self) -> bool {
        self.messages.iter().flat_map(|m| &m.parts).any(|p| matches!(p, Part::Image(_)))
    }
}

fn push_text(part: &Part, out: &mut String) {
    match part {
        Part::Text(text) | Part::Reasoning(text) => {
            out.push('\n');
            out.push_str(text);
        }
        Part::ToolCall { name, arguments, .. } => {
            out.push('\n');
            out.push_str(name);
            out.push_str(arguments);
        }
        Part::ToolResult { content, .. } => content.iter().for_each(|p| push_text(p, out)),
        Part::Image(_) | Part::Opaque { .. } => {}
    }
}

/// Why the model stopped.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Stop {
    #[default]
    End,
    MaxTokens,
    ToolUse,
    ContentFilter,
}

/// A whole answer, in no format.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Reply {
    pub id: String,
    pub model: String,
    pub parts: Vec<Part>,
    pub stop: Stop,
    pub usage: Option<Tokens>,
}

impl Reply {
    /// The text the model wrote.
    pub fn text(&self) -> String {
        self.parts.iter().filter_map(Part::text).collect()
    }
}

/// A streamed answer, one step at a time. Blocks (a text, a tool call, reasoning)
/// are numbered from 0 in the order they start; a block's deltas come between its
/// start and its end.
#[derive(Clone, Debug, PartialEq)]
pub enum Event {
    Start {
        id: String,
        model: String,
    },
    TextStart {
        block: usize,
    },
    Text {
        block: usize,
        delta: String,
    },
    ToolCallStart {
        block: usize,
        id: String,
        name: String,
    },
    ToolCallArguments {
        block: usize,
        delta: String,
    },
    ReasoningStart {
        block: usize,
    },
    Reasoning {
        block: usize,
        delta: String,
    },
    /// An opaque item, whole (encrypted reasoning, a signature).
    Opaque {
        block: usize,
        part: Part,
    },
    BlockEnd {
        block: usize,
    },
    /// Usage so far (a later one replaces an earlier one's fields it carries).
    Usage(Tokens),
    Finish {
        stop: Stop,
    },
    /// The provider reported an error in the stream.
    Error {
        message: String,
    },
}

/// The state every decoder keeps: which blocks are open, the text, the usage.
#[derive(Debug, Default)]
pub struct Tally {
    pub text: String,
    /// Bytes of everything generated so far: text, tool arguments, reasoning.
    pub generated: usize,
    pub usage: Option<Tokens>,
    /// The stream ended properly.
    pub finished: bool,
    pub stop: Option<Stop>,
}

impl Tally {
    /// Follows `events` (usage, text, the end).
    pub fn follow(&mut self, events: &[Event]) {
        for event in events {
            match event {
                Event::Text { delta, .. } => {
                    self.generated += delta.len();
                    self.text.push_str(delta);
                }
                Event::ToolCallArguments { delta, .. } | Event::Reasoning { delta, .. } => {
                    self.generated += delta.len();
                }
                Event::Usage(tokens) => {
                    self.usage.get_or_insert_with(Tokens::default).merge(tokens);
                }
                Event::Finish { stop } => {
                    self.stop = Some(*stop);
                }
                _ => {}
            }
        }
    }
}

/// A provider's stream, read.
pub trait Decoder: Send {
    /// The events of one SSE event.
    fn decode(&mut self, event: &sse::SseEvent) -> Vec<Event>;
    /// Whether the stream ended the way the format ends a stream.
    fn finished(&self) -> bool;
}

/// A client's stream, written.
pub trait Encoder: Send {
    /// The bytes for one event (none, one or several SSE events).
    fn encode(&mut self, event: &Event) -> Vec<bytes::Bytes>;
    /// The bytes that end the stream, after the last event.
    fn end(&mut self) -> Vec<bytes::Bytes>;
}

/// The decoder of `wire`'s streams.
pub fn decoder(wire: ProviderKind) -> Box<dyn Decoder> {
    match wire {
        ProviderKind::Openai => Box::new(chat::Decoder::default()),
        ProviderKind::Anthropic => Box::new(messages::Decoder::default()),
        ProviderKind::Responses => Box::new(responses::Decoder::default()),
        ProviderKind::Gemini => Box::new(gemini::Decoder::default()),
    }
}

/// The encoder of `wire`'s streams, for the answer to `request`.
pub fn encoder(wire: ProviderKind, request: &Conversation, model: &str) -> Box<dyn Encoder> {
    match wire {
        ProviderKind::Openai => Box::new(chat::Encoder::new(model)),
        ProviderKind::Anthropic => Box::new(messages::Encoder::new(model)),
        ProviderKind::Responses => Box::new(responses::Encoder::new(request, model)),
        ProviderKind::Gemini => Box::new(gemini::Encoder::new(model)),
    }
}

/// Reads a client's request body in `wire`'s format.
pub fn read_request(wire: ProviderKind, body: &Value) -> Result<Conversation, String> {
    match wire {
        ProviderKind::Openai => chat::read_request(body),
        ProviderKind::Anthropic => messages::read_request(body),
        ProviderKind::Responses => responses::read_request(body),
        ProviderKind::Gemini => gemini::read_request(body),
    }
}

/// Writes `conversation` as a request body in `wire`'s format, for `model` (the
/// provider's own name for it); `default_max` when the request set no output limit
/// and the format needs one.
pub fn write_request(wire: ProviderKind, conversation: &Conversation, model: &str, default_max: u64) -> Value {
    match wire {
        ProviderKind::Openai => chat::write_request(conversation, model),
        ProviderKind::Anthropic => messages::write_request(conversation, model, default_max),
        ProviderKind::Responses => responses::write_request(conversation, model),
        ProviderKind::Gemini => gemini::write_request(conversation),
    }
}

/// Reads a provider's whole answer in `wire`'s format.
pub fn read_reply(wire: ProviderKind, body: &Value) -> Reply {
    match wire {
        ProviderKind::Openai => chat::read_reply(body),
        ProviderKind::Anthropic => messages::read_reply(body),
        ProviderKind::Responses => responses::read_reply(body),
        ProviderKind::Gemini => gemini::read_reply(body),
    }
}

/// Writes `reply` as a whole answer in `wire`'s format, to `request`.
pub fn write_reply(wire: ProviderKind, reply: &Reply, request: &Conversation) -> Value {
    match wire {
        ProviderKind::Openai => chat::write_reply(reply),
        ProviderKind::Anthropic => messages::write_reply(reply),
        ProviderKind::Responses => responses::write_reply(reply, request),
        ProviderKind::Gemini => gemini::write_reply(reply),
    }
}

/// A JSON Schema object from whatever a client sent (`null` and missing become an
/// empty object schema).
fn schema(value: Option<&Value>) -> Value {
    match value {
        Some(Value::Object(map)) if !map.is_empty() => Value::Object(map.clone()),
        _ => json!({"type": "object", "properties": {}}),
    }
}

/// Stop sequences: an array of strings (or, as chat completions also takes, one string).
fn stop_sequences(value: Option<&Value>) -> Vec<String> {
    match value {
        Some(Value::String(stop)) => vec![stop.clone()],
        Some(Value::Array(stops)) => stops.iter().filter_map(Value::as_str).map(str::to_string).collect(),
        _ => Vec::new(),
    }
}

/// A string field, or `None`.
fn text<'a>(value: &'a Value, key: &str) -> Option<&'a str> {
    value.get(key).and_then(Value::as_str)
}

/// An id for something sandgate made up (`prefix_` and 24 hex digits).
fn new_id(prefix: &str) -> String {
    let mut bytes = [0u8; 12];
    let _ = getrandom::fill(&mut bytes);
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    format!("{prefix}_{hex}")
}

/// Unix seconds now.
fn now_secs() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// A tool result's content as plain text (for formats whose results are strings).
fn result_text(content: &[Part]) -> String {
    content
        .iter()
        .filter_map(|part| match part {
            Part::Text(text) => Some(text.clone()),
            Part::Image(url) => Some(format!("[image: {url}]")),
            _ => None,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// The error `type` a format's SDKs know for each kind: sandgate's one table for the
/// model routes (their statuses are HTTP's, `http::error::status`). The OpenAI
/// formats name the kind itself (`type` and `code`); the Anthropic format uses
/// Anthropic's types, with sandgate's kind beside them in `kind`; Gemini uses
/// Google's status names, with the kind as the `reason` of its `ErrorInfo`.
pub fn error_type(wire: ProviderKind, kind: Kind) -> &'static str {
    match wire {
        ProviderKind::Anthropic => match kind {
            Kind::Unauthorized => "authentication_error",
            Kind::Forbidden | Kind::ModelDenied => "permission_error",
            Kind::NotFound => "not_found_error",
            Kind::RateLimited | Kind::BudgetExceeded => "rate_limit_error",
            Kind::Overloaded | Kind::Unavailable => "overloaded_error",
            Kind::InvalidRequest => "invalid_request_error",
            _ => "api_error",
        },
        ProviderKind::Gemini => match kind {
            Kind::Unauthorized => "UNAUTHENTICATED",
            Kind::Forbidden | Kind::ModelDenied => "PERMISSION_DENIED",
            Kind::NotFound => "NOT_FOUND",
            Kind::RateLimited | Kind::BudgetExceeded => "RESOURCE_EXHAUSTED",
            Kind::Overloaded | Kind::Unavailable | Kind::UpstreamError => "UNAVAILABLE",
            Kind::InvalidRequest => "INVALID_ARGUMENT",
            _ => "INTERNAL",
        },
        ProviderKind::Openai | ProviderKind::Responses => kind.as_str(),
    }
}

/// An error body of `kind` in `wire`'s shape (see [`error_type`]).
pub fn error_body(wire: ProviderKind, status: u16, kind: Kind, message: &str) -> Value {
    let kind_type = error_type(wire, kind);
    match wire {
        ProviderKind::Anthropic => {
            json!({"type": "error", "error": {"type": kind_type, "message": message, "kind": kind}})
        }
        ProviderKind::Gemini => json!({"error": {
            "code": status, "message": message, "status": kind_type,
            "details": [{"@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": kind, "domain": "sandgate"}],
        }}),
        ProviderKind::Openai | ProviderKind::Responses => {
            json!({"error": {"message": message, "type": kind_type, "code": kind_type, "param": null}})
        }
    }
}

/// An error that ends a stream, in the client's format: Anthropic's `error` event,
/// Responses' `response.failed`, and for chat completions and Gemini the error body
/// as a `data:` event, as OpenAI and Google send errors mid-stream.
pub fn stream_error(wire: ProviderKind, status: u16, kind: Kind, message: &str) -> Vec<u8> {
    match wire {
        ProviderKind::Anthropic => format!("event: error\ndata: {}\n\n", error_body(wire, status, kind, message)),
        ProviderKind::Responses => {
            let failed = json!({"type": "response.failed", "response": {
                "id": format!("resp_{}", uuid::Uuid::now_v7().simple()), "object": "response", "status": "failed",
                "output": [], "error": {"code": error_type(wire, kind), "message": message},
            }});
            format!("event: response.failed\ndata: {failed}\n\n")
        }
        ProviderKind::Openai | ProviderKind::Gemini => {
            format!("data: {}\n\n", error_body(wire, status, kind, message))
        }
    }
    .into_bytes()
}

/// The message of a provider's error body, whatever its format.
pub fn error_message(body: &Value) -> Option<String> {
    body.pointer("/error/message").and_then(Value::as_str).map(str::to_string)
}

#[cfg(test)]
mod tests;
