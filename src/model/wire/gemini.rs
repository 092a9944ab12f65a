//! Google's Gemini API (`POST /v1beta/models/{model}:generateContent` and
//! `:streamGenerateContent?alt=sse`). The model is named in the path, not the body.

use bytes::Bytes;
use serde_json::{json, Value};

use super::sse::{frame, SseEvent};
use super::{
    new_id, result_text, schema, stop_sequences, text, Conversation, Event, Message, OutputFormat, Part, Reply, Role,
    Stop, Tool, ToolChoice,
};
use crate::model::usage::Tokens;
use crate::model::ProviderKind;

/// Reads a client's Gemini request (its model comes from the path).
pub fn read_request(body: &Value) -> Result<Conversation, String> {
    let mut conversation = Conversation::default();
    if let Some(system) = body.get("systemInstruction").or_else(|| body.get("system_instruction")) {
        let parts: Vec<&str> = system
            .get("parts")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(|p| text(p, "text"))
            .collect();
        if !parts.is_empty() {
            conversation.system.push(parts.join("\n"));
        }
    }
    // Calls without ids get one, and a response without one answers the earliest
    // unanswered call of its name.
    let mut unanswered: Vec<(String, String)> = Vec::new();
    let contents = body.get("contents").and_then(Value::as_array).ok_or("`contents` must be an array")?;
    for content in contents {
        let role = match text(content, "role") {
            Some("model") => Role::Assistant,
            _ => Role::User,
        };
        let mut parts = Vec::new();
        for part in content.get("parts").and_then(Value::as_array).into_iter().flatten() {
            if let Some(call) = part.get("functionCall") {
                let name = text(call, "name").unwrap_or_default().to_string();
                let id = text(call, "id").map_or_else(|| new_id("call"), str::to_string);
                unanswered.push((id.clone(), name.clone()));
                let arguments = call.get("args").map_or_else(|| "{}".to_string(), Value::to_string);
                if part.get("thoughtSignature").is_some() {
                    parts.push(Part::Opaque { wire: ProviderKind::Gemini, value: part.clone() });
                }
                parts.push(Part::ToolCall { id, name, arguments });
            } else if let Some(response) = part.get("functionResponse") {
                let name = text(response, "name").unwrap_or_default().to_string();
                let id = match text(response, "id") {
                    Some(id) => {
                        unanswered.retain(|(call, _)| call != id);
                        id.to_string()
                    }
                    None => match unanswered.iter().position(|(_, n)| *n == name) {
                        Some(at) => unanswered.remove(at).0,
                        None => new_id("call"),
                    },
                };
                let answer = response.get("response").cloned().unwrap_or(Value::Null);
                let (content, is_error) = match (answer.get("output"), answer.get("content"), answer.get("error")) {
                    (Some(Value::String(output)), ..) | (_, Some(Value::String(output)), _) => (output.clone(), false),
                    (_, _, Some(error)) => (error.as_str().map_or_else(|| error.to_string(), str::to_string), true),
                    _ => (answer.to_string(), false),
                };
                parts.push(Part::ToolResult { id, name: Some(name), content: vec![Part::Text(content)], is_error });
            } else if let Some(data) = part.get("inlineData").or_else(|| part.get("inline_data")) {
                let mime = text(data, "mimeType").or_else(|| text(data, "mime_type")).unwrap_or("image/png");
                parts.push(Part::Image(format!("data:{mime};base64,{}", text(data, "data").unwrap_or_default())));
            } else if let Some(file) = part.get("fileData").or_else(|| part.get("file_data")) {
                if let Some(uri) = text(file, "fileUri").or_else(|| text(file, "file_uri")) {
                    parts.push(Part::Image(uri.to_string()));
                }
            } else if let Some(text) = text(part, "text") {
                if part.get("thought").and_then(Value::as_bool) == Some(true) {
                    parts.push(Part::Reasoning(text.to_string()));
                } else {
                    parts.push(Part::Text(text.to_string()));
                }
            }
        }
        conversation.messages.push(Message::new(role, parts));
    }
    for tool in body.get("tools").and_then(Value::as_array).into_iter().flatten() {
        let declarations = tool.get("functionDeclarations").or_else(|| tool.get("function_declarations"));
        match declarations.and_then(Value::as_array) {
            Some(declarations) => {
                for declaration in declarations {
                    conversation.tools.push(Tool {
                        name: text(declaration, "name").ok_or("each function declaration needs a `name`")?.to_string(),
                        description: text(declaration, "description").map(str::to_string),
                        parameters: schema(
                            declaration.get("parametersJsonSchema").or_else(|| declaration.get("parameters")),
                        ),
                        namespace: None,
                        hosted: None,
                    });
                }
            }
            None => {
                let kind = tool.as_object().and_then(|m| m.keys().next().cloned()).unwrap_or_else(|| "tool".into());
                conversation.tools.push(Tool {
                    name: kind,
                    description: None,
                    parameters: schema(None),
                    namespace: None,
                    hosted: Some((ProviderKind::Gemini, tool.clone())),
                });
            }
        }
    }
    if let Some(config) = body.pointer("/toolConfig/functionCallingConfig") {
        let allowed = config.get("allowedFunctionNames").and_then(Value::as_array);
        conversation.tool_choice = match text(config, "mode") {
            Some("NONE") => Some(ToolChoice::None),
            Some("ANY") => match allowed.filter(|a| a.len() == 1).and_then(|a| a[0].as_str()) {
                Some(name) => Some(ToolChoice::Named(name.to_string())),
                None => Some(ToolChoice::Required),
            },
            _ => Some(ToolChoice::Auto),
        };
    }
    let generation = body.get("generationConfig").cloned().unwrap_or(Value::Null);
    conversation.max_output = generation.get("maxOutputTokens").and_then(Value::as_u64);
    conversation.temperature = generation.get("temperature").and_then(Value::as_f64);
    conversation.top_p = generation.get("topP").and_then(Value::as_f64);
    conversation.stop = stop_sequences(generation.get("stopSequences"));
    if text(&generation, "responseMimeType") == Some("application/json") {
        conversation.output =
            Some(match generation.get("responseJsonSchema").or_else(|| generation.get("responseSchema")) {
                Some(schema) => {
                    OutputFormat::JsonSchema { name: "output".into(), schema: schema.clone(), strict: None }
                }
                None => OutputFormat::JsonObject,
            });
    }
    conversation.reasoning_effort =
        generation.pointer("/thinkingConfig/thinkingLevel").and_then(Value::as_str).map(str::to_lowercase);
    Ok(conversation)
}

/// The name of the call `id` answers, from the conversation's tool calls.
fn call_name(conversation: &Conversation, id: &str) -> Option<String> {
    conversation.messages.iter().flat_map(|m| &m.parts).find_map(|part| match part {
        Part::ToolCall { id: call, name, .. } if call == id => Some(name.clone()),
        _ => None,
    })
}

fn arguments(arguments: &str) -> Value {
    match serde_json::from_str::<Value>(arguments) {
        Ok(value @ Value::Object(_)) => value,
        _ => json!({}),
    }
}

fn image_part(url: &str) -> Value {
    match url.strip_prefix("data:").and_then(|rest| rest.split_once(";base64,")) {
        Some((mime, data)) => json!({"inlineData": {"mimeType": mime, "data": data}}),
        None => json!({"fileData": {"fileUri": url}}),
    }
}

/// Writes a Gemini request (the model goes in the path).
pub fn write_request(conversation: &Conversation) -> Value {
    let mut contents: Vec<Value> = Vec::new();
    for message in &conversation.messages {
        let role = if message.role == Role::Assistant { "model" } else { "user" };
        let mut parts = Vec::new();
        let mut signed = false;
        for part in &message.parts {
            match part {
                Part::Text(text) if !text.is_empty() => parts.push(match message.role {
                    Role::System => json!({"text": format!("<system>\n{text}\n</system>")}),
                    _ => json!({ "text": text }),
                }),
                Part::Image(url) => parts.push(image_part(url)),
                Part::ToolCall { id, name, arguments: args } => {
                    if signed {
                        signed = false;
                        continue;
                    }
                    parts.push(json!({"functionCall": {"id": id, "name": name, "args": arguments(args)}}))
                }
                Part::ToolResult { id, name, content, is_error } => {
                    let name = name.clone().or_else(|| call_name(conversation, id)).unwrap_or_default();
                    let key = if *is_error { "error" } else { "output" };
                    parts.push(
                        json!({"functionResponse": {"id": id, "name": name, "response": {key: result_text(content)}}}),
                    );
                }
                // A signed call is sent as it came, in place of the plain one after it.
                Part::Opaque { wire: ProviderKind::Gemini, value } => {
                    parts.push(value.clone());
                    signed = true;
                }
                _ => {}
            }
        }
        if parts.is_empty() {
            continue;
        }
        match contents.last_mut() {
            Some(last) if last["role"] == role => {
                last["parts"].as_array_mut().into_iter().for_each(|p| p.extend(parts.clone()));
            }
            _ => contents.push(json!({"role": role, "parts": parts})),
        }
    }
    let mut out = json!({ "contents": contents });
    if !conversation.system.is_empty() {
        out["systemInstruction"] = json!({"parts": [{"text": conversation.system.join("\n\n")}]});
    }
    let mut tools = Vec::new();
    let declarations: Vec<Value> = conversation
        .tools
        .iter()
        .filter(|tool| tool.hosted.is_none())
        .map(|tool| {
            let mut declaration = json!({"name": tool.name, "parametersJsonSchema": tool.parameters});
            if let Some(description) = &tool.description {
                declaration["description"] = Value::String(description.clone());
            }
            declaration
        })
        .collect();
    if !declarations.is_empty() {
        tools.push(json!({ "functionDeclarations": declarations }));
    }
    tools.extend(conversation.tools.iter().filter_map(|t| t.hosted.as_ref().map(|(_, definition)| definition.clone())));
    if !tools.is_empty() {
        out["tools"] = Value::Array(tools);
        if let Some(choice) = &conversation.tool_choice {
            out["toolConfig"] = json!({"functionCallingConfig": match choice {
                ToolChoice::Auto => json!({"mode": "AUTO"}),
                ToolChoice::None => json!({"mode": "NONE"}),
                ToolChoice::Required => json!({"mode": "ANY"}),
                ToolChoice::Named(name) => json!({"mode": "ANY", "allowedFunctionNames": [name]}),
            }});
        }
    }
    let mut generation = serde_json::Map::new();
    if let Some(max) = conversation.max_output {
        generation.insert("maxOutputTokens".into(), json!(max));
    }
    if let Some(temperature) = conversation.temperature {
        generation.insert("temperature".into(), json!(temperature));
    }
    if let Some(top_p) = conversation.top_p {
        generation.insert("topP".into(), json!(top_p));
    }
    if !conversation.stop.is_empty() {
        generation.insert("stopSequences".into(), json!(conversation.stop));
    }
    match &conversation.output {
        Some(OutputFormat::JsonObject) => {
            generation.insert("responseMimeType".into(), json!("application/json"));
        }
        Some(OutputFormat::JsonSchema { schema, .. }) => {
            generation.insert("responseMimeType".into(), json!("application/json"));
            generation.insert("responseJsonSchema".into(), schema.clone());
        }
        None => {}
    }
    if !generation.is_empty() {
        out["generationConfig"] = Value::Object(generation);
    }
    out
}

/// Usage in Gemini's shape: thinking counts as output.
pub fn tokens(usage: &Value) -> Tokens {
    let number = |key: &str| usage.get(key).and_then(Value::as_u64).unwrap_or(0);
    Tokens {
        input: number("promptTokenCount"),
        output: number("candidatesTokenCount") + number("thoughtsTokenCount"),
        cached: number("cachedContentTokenCount"),
    }
}

fn usage_json(tokens: &Tokens) -> Value {
    json!({
        "promptTokenCount": tokens.input,
        "candidatesTokenCount": tokens.output,
        "totalTokenCount": tokens.input + tokens.output,
        "cachedContentTokenCount": tokens.cached,
    })
}

fn stop_of(reason: &str, calls: bool) -> Stop {
    match reason {
        "MAX_TOKENS" => Stop::MaxTokens,
        "SAFETY" | "RECITATION" | "BLOCKLIST" | "PROHIBITED_CONTENT" | "SPII" | "IMAGE_SAFETY" => Stop::ContentFilter,
        _ if calls => Stop::ToolUse,
        _ => Stop::End,
    }
}

fn reason_of(stop: Stop) -> &'static str {
    match stop {
        Stop::End | Stop::ToolUse => "STOP",
        Stop::MaxTokens => "MAX_TOKENS",
        Stop::ContentFilter => "SAFETY",
    }
}

/// The parts of one candidate's content.
fn parts_of(content: &Value) -> Vec<Part> {
    let mut parts = Vec::new();
    for part in content.get("parts").and_then(Value::as_array).into_iter().flatten() {
        if let Some(call) = part.get("functionCall") {
            if part.get("thoughtSignature").is_some() {
                parts.push(Part::Opaque { wire: ProviderKind::Gemini, value: part.clone() });
            }
            parts.push(Part::ToolCall {
                id: text(call, "id").map_or_else(|| new_id("call"), str::to_string),
                name: text(call, "name").unwrap_or_default().to_string(),
                arguments: call.get("args").map_or_else(|| "{}".to_string(), Value::to_string),
            });
        } else if let Some(text) = text(part, "text") {
            if part.get("thought").and_then(Value::as_bool) == Some(true) {
                parts.push(Part::Reasoning(text.to_string()));
            } else {
                parts.push(Part::Text(text.to_string()));
            }
        }
    }
    parts
}

/// Reads a provider's whole Gemini answer.
pub fn read_reply(body: &Value) -> Reply {
    let candidate = body.pointer("/candidates/0").cloned().unwrap_or(Value::Null);
    let parts = parts_of(candidate.get("content").unwrap_or(&Value::Null));
    let calls = parts.iter().any(|p| matches!(p, Part::ToolCall { .. }));
    Reply {
        id: text(body, "responseId").unwrap_or_default().to_string(),
        model: text(body, "modelVersion").unwrap_or_default().to_string(),
        stop: stop_of(text(&candidate, "finishReason").unwrap_or("STOP"), calls),
        parts,
        usage: body.get("usageMetadata").filter(|u| u.is_object()).map(tokens),
    }
}

fn out_parts(parts: &[Part]) -> Vec<Value> {
    let mut out = Vec::new();
    let mut signed = false;
    for part in parts {
        match part {
            Part::Text(text) => out.push(json!({ "text": text })),
            Part::Reasoning(text) => out.push(json!({"text": text, "thought": true})),
            Part::Opaque { wire: ProviderKind::Gemini, value } => {
                out.push(value.clone());
                signed = true;
            }
            Part::ToolCall { id, name, arguments: args } => {
                if std::mem::take(&mut signed) {
                    continue;
                }
                out.push(json!({"functionCall": {"id": id, "name": name, "args": arguments(args)}}));
            }
            _ => {}
        }
    }
    out
}

/// Writes a whole Gemini answer.
pub fn write_reply(reply: &Reply) -> Value {
    json!({
        "candidates": [{
            "content": {"role": "model", "parts": out_parts(&reply.parts)},
            "finishReason": reason_of(reply.stop),
            "index": 0,
        }],
        "usageMetadata": usage_json(&reply.usage.unwrap_or_default()),
        "modelVersion": reply.model,
        "responseId": if reply.id.is_empty() { new_id("resp") } else { reply.id.clone() },
    })
}

/// Reads a Gemini stream: each event a whole response, the last with `finishReason`.
#[derive(Debug, Default)]
pub struct Decoder {
    started: bool,
    next_block: usize,
    text_block: Option<usize>,
    reasoning_block: Option<usize>,
    calls: bool,
    done: bool,
}

impl Decoder {
    fn open(&mut self) -> usize {
        let block = self.next_block;
        self.next_block += 1;
        block
    }
}

impl super::Decoder for Decoder {
    fn decode(&mut self, event: &SseEvent) -> Vec<Event> {
        let mut out = Vec::new();
        let Ok(chunk) = serde_json::from_str::<Value>(&event.data) else { return out };
        if let Some(error) = chunk.get("error").filter(|e| e.is_object()) {
            out.push(Event::Error { message: text(error, "message").unwrap_or("the provider failed").to_string() });
            return out;
        }
        if !self.started {
            self.started = true;
            out.push(Event::Start {
                id: text(&chunk, "responseId").unwrap_or_default().to_string(),
                model: text(&chunk, "modelVersion").unwrap_or_default().to_string(),
            });
        }
        let candidate = chunk.pointer("/candidates/0").cloned().unwrap_or(Value::Null);
        for part in parts_of(candidate.get("content").unwrap_or(&Value::Null)) {
            match part {
                Part::Text(delta) => {
                    if let Some(block) = self.reasoning_block.take() {
                        out.push(Event::BlockEnd { block });
                    }
                    let block = match self.text_block {
                        Some(block) => block,
                        None => {
                            let block = self.open();
                            self.text_block = Some(block);
                            out.push(Event::TextStart { block });
                            block
                        }
                    };
                    out.push(Event::Text { block, delta });
                }
                Part::Reasoning(delta) => {
                    let block = match self.reasoning_block {
                        Some(block) => block,
                        None => {
                            let block = self.open();
                            self.reasoning_block = Some(block);
                            out.push(Event::ReasoningStart { block });
                            block
                        }
                    };
                    out.push(Event::Reasoning { block, delta });
                }
                Part::ToolCall { id, name, arguments } => {
                    for block in [self.text_block.take(), self.reasoning_block.take()].into_iter().flatten() {
                        out.push(Event::BlockEnd { block });
                    }
                    self.calls = true;
                    let block = self.open();
                    out.push(Event::ToolCallStart { block, id, name });
                    out.push(Event::ToolCallArguments { block, delta: arguments });
                    out.push(Event::BlockEnd { block });
                }
                part @ Part::Opaque { .. } => {
                    let block = self.open();
                    out.push(Event::Opaque { block, part });
                    out.push(Event::BlockEnd { block });
                }
                _ => {}
            }
        }
        if let Some(usage) = chunk.get("usageMetadata").filter(|u| u.is_object()) {
            out.push(Event::Usage(tokens(usage)));
        }
        if let Some(reason) = text(&candidate, "finishReason") {
            for block in [self.text_block.take(), self.reasoning_block.take()].into_iter().flatten() {
                out.push(Event::BlockEnd { block });
            }
            out.push(Event::Finish { stop: stop_of(reason, self.calls) });
            self.done = true;
        }
        out
    }

    fn finished(&self) -> bool {
        self.done
    }
}

/// Writes a Gemini stream. Each chunk is held until the next is ready, so the last
/// one can carry `finishReason` and the usage, as Gemini's own streams do.
pub struct Encoder {
    model: String,
    id: String,
    held: Option<Vec<Value>>,
    /// The call being streamed: id, name, arguments so far.
    call: Option<(usize, String, String, String)>,
    usage: Option<Tokens>,
    stop: Option<Stop>,
    failed: Option<String>,
}

impl Encoder {
    pub fn new(model: &str) -> Self {
        Self {
            model: model.to_string(),
            id: new_id("resp"),
            held: None,
            call: None,
            usage: None,
            stop: None,
            failed: None,
        }
    }

    fn chunk(&self, parts: Vec<Value>, last: bool) -> Bytes {
        let mut candidate = json!({"content": {"role": "model", "parts": parts}, "index": 0});
        let mut chunk = json!({"candidates": [], "modelVersion": self.model, "responseId": self.id});
        if last {
            candidate["finishReason"] = json!(reason_of(self.stop.unwrap_or(Stop::End)));
            chunk["usageMetadata"] = usage_json(&self.usage.unwrap_or_default());
        }
        chunk["candidates"] = json!([candidate]);
        frame(None, &chunk.to_string())
    }

    /// Holds `parts` as the next chunk, sending the one held before.
    fn hold(&mut self, parts: Vec<Value>) -> Vec<Bytes> {
        match self.held.replace(parts) {
            Some(previous) => vec![self.chunk(previous, false)],
            None => Vec::new(),
        }
    }
}

impl super::Encoder for Encoder {
    fn encode(&mut self, event: &Event) -> Vec<Bytes> {
        match event {
            Event::Text { delta, .. } if !delta.is_empty() => self.hold(vec![json!({ "text": delta })]),
            Event::Reasoning { delta, .. } if !delta.is_empty() => {
                self.hold(vec![json!({"text": delta, "thought": true})])
            }
            Event::ToolCallStart { block, id, name } => {
                self.call = Some((*block, id.clone(), name.clone(), String::new()));
                Vec::new()
            }
            Event::ToolCallArguments { block, delta } => {
                if let Some((at, _, _, args)) = self.call.as_mut() {
                    if at == block {
                        args.push_str(delta);
                    }
                }
                Vec::new()
            }
            Event::BlockEnd { block } => match self.call.take() {
                Some((at, id, name, args)) if at == *block => {
                    self.hold(vec![json!({"functionCall": {"id": id, "name": name, "args": arguments(&args)}})])
                }
                other => {
                    self.call = other;
                    Vec::new()
                }
            },
            Event::Usage(tokens) => {
                self.usage.get_or_insert_with(Tokens::default).merge(tokens);
                Vec::new()
            }
            Event::Finish { stop } => {
                self.stop = Some(*stop);
                Vec::new()
            }
            Event::Error { message } => {
                self.failed = Some(message.clone());
                Vec::new()
            }
            _ => Vec::new(),
        }
    }

    fn end(&mut self) -> Vec<Bytes> {
        let mut out = Vec::new();
        if let Some(message) = self.failed.take() {
            if let Some(held) = self.held.take() {
                out.push(self.chunk(held, false));
            }
            let error = json!({"error": {"code": 500, "message": message, "status": "INTERNAL"}});
            out.push(frame(None, &error.to_string()));
            return out;
        }
        let last = self.held.take().unwrap_or_default();
        out.push(self.chunk(last, true));
        out
    }
}
