//! Every format reads what every format writes, whole and streamed.

use serde_json::json;

use super::*;

const WIRES: [ProviderKind; 4] =
    [ProviderKind::Openai, ProviderKind::Anthropic, ProviderKind::Responses, ProviderKind::Gemini];

fn conversation() -> Conversation {
    Conversation {
        system: vec!["You are terse.".into()],
        messages: vec![
            Message::new(Role::User, vec![Part::Text("what is six times seven?".into())]),
            Message::new(
                Role::Assistant,
                vec![
                    Part::Text("Let me run it.".into()),
                    Part::ToolCall {
                        id: "call_1".into(),
                        name: "mcp__sandgate__execute".into(),
                        arguments: r#"{"code":"return 6 * 7"}"#.into(),
                    },
                ],
            ),
            Message::new(
                Role::User,
                vec![Part::ToolResult {
                    id: "call_1".into(),
                    name: None,
                    content: vec![Part::Text("42".into())],
                    is_error: false,
                }],
            ),
            Message::new(Role::Assistant, vec![Part::Text("It is 42.".into())]),
            Message::new(Role::User, vec![Part::Text("thanks".into())]),
        ],
        tools: vec![
            Tool {
                name: "mcp__sandgate__execute".into(),
                description: Some("Run code".into()),
                parameters: json!({"type": "object", "properties": {"code": {"type": "string"}}, "required": ["code"]}),
                namespace: Some(("mcp__sandgate".into(), "execute".into())),
                hosted: None,
            },
            Tool {
                name: "read_file".into(),
                description: None,
                parameters: json!({"type": "object", "properties": {"path": {"type": "string"}}}),
                namespace: None,
                hosted: None,
            },
        ],
        max_output: Some(256),
        temperature: Some(0.5),
        stream: false,
        ..Default::default()
    }
}

/// What must survive a trip through any format: the instructions, each message's
/// role and parts (tool results by id and text), the tools' names and schemas.
fn essence(conversation: &Conversation) -> serde_json::Value {
    let part = |part: &Part| match part {
        Part::Text(text) => json!({"text": text}),
        Part::ToolCall { id, name, arguments } => {
            json!({"call": id, "name": name, "arguments": serde_json::from_str::<serde_json::Value>(arguments).unwrap()})
        }
        Part::ToolResult { id, content, is_error, .. } => {
            json!({"result": id, "text": result_text(content), "error": is_error})
        }
        other => json!({"other": format!("{other:?}")}),
    };
    json!({
        "system": conversation.system.join("\n\n"),
        "messages": conversation.messages.iter().map(|m| json!({
            "role": format!("{:?}", m.role),
            "parts": m.parts.iter().map(part).collect::<Vec<_>>(),
        })).collect::<Vec<_>>(),
        "tools": conversation.tools.iter().map(|t| json!([t.name, t.parameters])).collect::<Vec<_>>(),
        "max_output": conversation.max_output,
    })
}

#[test]
fn every_format_reads_what_every_format_writes() {
    let original = conversation();
    for wire in WIRES {
        let written = write_request(wire, &original, "model-x", 1024);
        let read = read_request(wire, &written).unwrap_or_else(|e| panic!("{wire:?}: {e}\n{written:#}"));
        assert_eq!(essence(&read), essence(&original), "{wire:?}:\n{written:#}");
        if wire == ProviderKind::Responses {
            // The namespace goes back as Codex sent it.
            assert_eq!(
                written["tools"][0],
                json!({"type": "namespace", "name": "mcp__sandgate", "tools": [{
                "type": "function", "name": "execute", "description": "Run code", "strict": false,
                "parameters": original.tools[0].parameters}]})
            );
            assert_eq!(read.tools[0].namespace, original.tools[0].namespace);
        }
        if wire != ProviderKind::Gemini {
            assert_eq!(written["model"], "model-x", "{wire:?}");
        }
    }
}

#[test]
fn hosted_tools_are_refused_named_unless_dropped() {
    let body = json!({"model": "m", "input": "hi", "tools": [{"type": "web_search", "external_web_access": false}]});
    let mut conversation = read_request(ProviderKind::Responses, &body).unwrap();
    let refusal = conversation.hosted_refusal().expect("a hosted tool");
    assert!(refusal.contains("`web_search`"), "{refusal}");
    // A provider of the same format takes it as it came.
    assert_eq!(write_request(ProviderKind::Responses, &conversation, "m", 1)["tools"], body["tools"]);
    conversation.drop_hosted(&["web_search".to_string()]);
    assert!(conversation.hosted_refusal().is_none() && conversation.tools.is_empty());
}

/// A reply with text and a tool call, streamed in `wire`'s format by its encoder.
fn stream_in(wire: ProviderKind, request: &Conversation) -> Vec<u8> {
    let events = [
        Event::Start { id: "r1".into(), model: "m".into() },
        Event::TextStart { block: 0 },
        Event::Text { block: 0, delta: "Let me ".into() },
        Event::Text { block: 0, delta: "run it.".into() },
        Event::BlockEnd { block: 0 },
        Event::ToolCallStart { block: 1, id: "call_9".into(), name: "mcp__sandgate__execute".into() },
        Event::ToolCallArguments { block: 1, delta: r#"{"code":"#.into() },
        Event::ToolCallArguments { block: 1, delta: r#""return 1"}"#.into() },
        Event::BlockEnd { block: 1 },
        Event::Finish { stop: Stop::ToolUse },
        Event::Usage(Tokens { input: 11, output: 7, cached: 2 }),
    ];
    let mut encoder = encoder(wire, request, "m");
    let mut out = Vec::new();
    for event in &events {
        encoder.encode(event).iter().for_each(|b| out.extend_from_slice(b));
    }
    encoder.end().iter().for_each(|b| out.extend_from_slice(b));
    out
}

/// What a stream in `wire`'s format says: text, tool calls, usage, whether it ended.
fn read_stream(wire: ProviderKind, bytes: &[u8], chunk: usize) -> (String, Vec<(String, String, String)>, Tally, bool) {
    let mut parser = sse::SseParser::default();
    let mut decoder = decoder(wire);
    let mut tally = Tally::default();
    let mut calls: Vec<(String, String, String)> = Vec::new();
    let mut blocks: Vec<(usize, usize)> = Vec::new();
    for piece in bytes.chunks(chunk) {
        for event in parser.feed(piece) {
            let events = decoder.decode(&event);
            tally.follow(&events);
            for event in events {
                match event {
                    Event::ToolCallStart { block, id, name } => {
                        blocks.push((block, calls.len()));
                        calls.push((id, name, String::new()));
                    }
                    Event::ToolCallArguments { block, delta } => {
                        let at = blocks.iter().find(|(b, _)| *b == block).unwrap().1;
                        calls[at].2.push_str(&delta);
                    }
                    _ => {}
                }
            }
        }
    }
    (tally.text.clone(), calls, tally, decoder.finished())
}

#[test]
fn every_format_streams_text_calls_and_usage_across() {
    let request = conversation();
    for wire in WIRES {
        let bytes = stream_in(wire, &request);
        for chunk in [1, 7, bytes.len()] {
            let (text, calls, tally, finished) = read_stream(wire, &bytes, chunk);
            let shown = String::from_utf8_lossy(&bytes);
            assert_eq!(text, "Let me run it.", "{wire:?}\n{shown}");
            assert_eq!(calls.len(), 1, "{wire:?}\n{shown}");
            assert_eq!(calls[0].1, "mcp__sandgate__execute", "{wire:?}\n{shown}");
            let arguments: serde_json::Value = serde_json::from_str(&calls[0].2).unwrap();
            assert_eq!(arguments, json!({"code": "return 1"}), "{wire:?}");
            if wire != ProviderKind::Gemini {
                assert_eq!(calls[0].0, "call_9", "{wire:?}");
            }
            let usage = tally.usage.expect("usage");
            assert_eq!((usage.input, usage.output, usage.cached), (11, 7, 2), "{wire:?}\n{shown}");
            assert!(finished, "{wire:?} ended its own way\n{shown}");
            assert_eq!(tally.stop, Some(Stop::ToolUse), "{wire:?}");
        }
    }
}

#[test]
fn codex_sees_its_namespace_and_the_events_it_reads() {
    let request = conversation();
    let bytes = stream_in(ProviderKind::Responses, &request);
    let mut parser = sse::SseParser::default();
    let events: Vec<serde_json::Value> =
        parser.feed(&bytes).iter().map(|e| serde_json::from_str(&e.data).unwrap()).collect();
    let kinds: Vec<&str> = events.iter().map(|e| e["type"].as_str().unwrap()).collect();
    assert_eq!(
        kinds,
        [
            "response.created",
            "response.in_progress",
            "response.output_item.added",
            "response.content_part.added",
            "response.output_text.delta",
            "response.output_text.delta",
            "response.output_text.done",
            "response.content_part.done",
            "response.output_item.done",
            "response.output_item.added",
            "response.function_call_arguments.delta",
            "response.function_call_arguments.delta",
            "response.function_call_arguments.done",
            "response.output_item.done",
            "response.completed",
        ]
    );
    let call = &events[13]["item"];
    assert_eq!((call["name"].as_str(), call["namespace"].as_str()), (Some("execute"), Some("mcp__sandgate")));
    assert_eq!(call["call_id"], "call_9");
    let sequence: Vec<u64> = events.iter().map(|e| e["sequence_number"].as_u64().unwrap()).collect();
    assert_eq!(sequence, (0..events.len() as u64).collect::<Vec<_>>());
    let completed = &events[14]["response"];
    assert_eq!(completed["output"].as_array().unwrap().len(), 2);
    assert_eq!(completed["usage"]["total_tokens"], 18);
}

#[test]
fn whole_replies_cross_every_pair() {
    let request = conversation();
    let reply = Reply {
        id: "r".into(),
        model: "m".into(),
        parts: vec![
            Part::Text("Running.".into()),
            Part::ToolCall { id: "call_5".into(), name: "read_file".into(), arguments: r#"{"path":"a"}"#.into() },
        ],
        stop: Stop::ToolUse,
        usage: Some(Tokens { input: 5, output: 3, cached: 1 }),
    };
    for provider in WIRES {
        let from_provider = read_reply(provider, &write_reply(provider, &reply, &request));
        for client in WIRES {
            let back = read_reply(client, &write_reply(client, &from_provider, &request));
            assert_eq!(back.text(), "Running.", "{provider:?} -> {client:?}");
            assert_eq!(back.usage, reply.usage, "{provider:?} -> {client:?}");
            assert_eq!(back.stop, Stop::ToolUse, "{provider:?} -> {client:?}");
            let call = back.parts.iter().find(|p| matches!(p, Part::ToolCall { .. })).unwrap();
            let Part::ToolCall { name, arguments, .. } = call else { unreachable!() };
            assert_eq!(
                (name.as_str(), arguments.as_str()),
                ("read_file", r#"{"path":"a"}"#),
                "{provider:?} -> {client:?}"
            );
        }
    }
}
