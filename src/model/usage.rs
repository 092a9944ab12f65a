//! Reading token usage out of provider responses, whole or streamed, and counting
//! tokens when a provider reports none.

use std::sync::OnceLock;

use serde_json::Value;

use super::catalog::ProviderKind;

/// Tokens of one call.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Tokens {
    /// All input tokens, cached ones included.
    pub input: u64,
    pub output: u64,
    /// Input tokens served from the provider's prompt cache.
    pub cached: u64,
}

fn tokenizer() -> &'static tiktoken_rs::CoreBPE {
    static BPE: OnceLock<tiktoken_rs::CoreBPE> = OnceLock::new();
    BPE.get_or_init(|| tiktoken_rs::cl100k_base().expect("the cl100k tokenizer is bundled"))
}

/// Text counted token by token; past it, the rest is estimated from its length.
const COUNTED_BYTES: usize = 1 << 20;
/// Bytes per token assumed past [`COUNTED_BYTES`]: fewer than the four of ordinary
/// text, so the estimate errs high.
const BYTES_PER_TOKEN: usize = 3;
/// The longest piece of text the BPE sees at once. Its merging is quadratic in a
/// piece's length, and the pre-tokenizer keeps a run of letters as one piece, so a
/// single 1 MB "word" took a second; cut at this length (at whitespace when there is
/// some near the cut) it takes milliseconds, and a count changes by at most a token
/// per cut.
const PIECE_BYTES: usize = 2048;
/// Below this, counting costs less than handing it to another thread.
const INLINE_BYTES: usize = 4096;

/// Tokens in `text` by the cl100k tokenizer: the estimate used for budget
/// reservations and when a stream reports no usage. Its cost is linear in the text,
/// and bounded: past `COUNTED_BYTES` the rest is estimated from its length.
/// Callers on the async runtime use [`estimate_tokens`].
pub fn count_tokens(text: &str) -> u64 {
    if text.is_empty() {
        return 0;
    }
    let head_end = floor_char_boundary(text, COUNTED_BYTES);
    let (head, rest) = text.split_at(head_end);
    let mut tokens = 0;
    let mut left = head;
    while !left.is_empty() {
        let piece = next_piece(left);
        tokens += tokenizer().encode_ordinary(piece).len() as u64;
        left = &left[piece.len()..];
    }
    tokens + rest.len().div_ceil(BYTES_PER_TOKEN) as u64
}

/// The next piece of `text` to count: all of it when short, else up to
/// [`PIECE_BYTES`], cut after the last whitespace in its second half if there is one.
fn next_piece(text: &str) -> &str {
    if text.len() <= PIECE_BYTES {
        return text;
    }
    let end = floor_char_boundary(text, PIECE_BYTES);
    let cut =
        text.as_bytes()[end / 2..end].iter().rposition(u8::is_ascii_whitespace).map_or(end, |at| end / 2 + at + 1);
    &text[..cut]
}

fn floor_char_boundary(text: &str, at: usize) -> usize {
    if at >= text.len() {
        return text.len();
    }
    (0..=at).rev().find(|&i| text.is_char_boundary(i)).unwrap_or(0)
}

/// [`count_tokens`] off the async workers: on the blocking pool, at most one count
/// per core at a time, so a large request never stalls other requests (a count of
/// one 8 MB request stalled every other request for seconds when it ran inline).
pub async fn estimate_tokens(text: String) -> u64 {
    if text.len() <= INLINE_BYTES {
        return count_tokens(&text);
    }
    static SLOTS: OnceLock<tokio::sync::Semaphore> = OnceLock::new();
    let slots = SLOTS.get_or_init(|| {
        tokio::sync::Semaphore::new(std::thread::available_parallelism().map_or(2, std::num::NonZeroUsize::get))
    });
    let _slot = slots.acquire().await;
    let bytes = text.len();
    tokio::task::spawn_blocking(move || count_tokens(&text))
        .await
        .unwrap_or_else(|_| bytes.div_ceil(BYTES_PER_TOKEN) as u64)
}

/// Every string of message text in an OpenAI or Anthropic request body (system,
/// message contents, text blocks), for estimating input tokens.
pub fn request_text(body: &Value) -> String {
    let mut out = String::new();
    fn walk(value: &Value, out: &mut String) {
        match value {
            Value::String(text) => {
                out.push_str(text);
                out.push('\n');
            }
            Value::Array(items) => items.iter().for_each(|item| walk(item, out)),
            Value::Object(map) => {
                if let Some(text) = map.get("text") {
                    walk(text, out);
                }
                if let Some(content) = map.get("content") {
                    walk(content, out);
                }
            }
            _ => {}
        }
    }
    if let Some(system) = body.get("system") {
        walk(system, &mut out);
    }
    if let Some(messages) = body.get("messages") {
        walk(messages, &mut out);
    }
    out
}

fn number(value: &Value, pointer: &str) -> u64 {
    value.pointer(pointer).and_then(Value::as_u64).unwrap_or(0)
}

/// Usage and reply text of a whole (non-streamed) response.
pub fn from_response(kind: ProviderKind, body: &Value) -> (Option<Tokens>, String) {
    match kind {
        ProviderKind::Openai => {
            let text =
                body.pointer("/choices/0/message/content").and_then(Value::as_str).unwrap_or_default().to_string();
            let usage = body.get("usage").filter(|u| u.is_object()).map(|u| Tokens {
                input: number(u, "/prompt_tokens"),
                output: number(u, "/completion_tokens"),
                cached: number(u, "/prompt_tokens_details/cached_tokens"),
            });
            (usage, text)
        }
        ProviderKind::Anthropic => {
            let text = body
                .get("content")
                .and_then(Value::as_array)
                .map(|blocks| blocks.iter().filter_map(|b| b.get("text").and_then(Value::as_str)).collect::<String>())
                .unwrap_or_default();
            let usage = body.get("usage").filter(|u| u.is_object()).map(|u| {
                let cached = number(u, "/cache_read_input_tokens");
                Tokens {
                    input: number(u, "/input_tokens") + cached + number(u, "/cache_creation_input_tokens"),
                    output: number(u, "/output_tokens"),
                    cached,
                }
            });
            (usage, text)
        }
    }
}

/// Follows a server-sent event stream as it passes through, collecting the usage the
/// provider reports and the text it streams.
#[derive(Debug)]
pub struct StreamMeter {
    kind: ProviderKind,
    pending: Vec<u8>,
    pub tokens: Tokens,
    pub saw_usage: bool,
    pub text: String,
    /// The stream ended properly (`[DONE]` or `message_stop`).
    pub finished: bool,
}

impl StreamMeter {
    pub fn new(kind: ProviderKind) -> Self {
        Self {
            kind,
            pending: Vec::new(),
            tokens: Tokens::default(),
            saw_usage: false,
            text: String::new(),
            finished: false,
        }
    }

    pub fn feed(&mut self, bytes: &[u8]) {
        self.pending.extend_from_slice(bytes);
        while let Some(end) = find_event_end(&self.pending) {
            let event: Vec<u8> = self.pending.drain(..end.0 + end.1).collect();
            let event = String::from_utf8_lossy(&event[..end.0]).into_owned();
            self.event(&event);
        }
    }

    fn event(&mut self, event: &str) {
        let data: String = event
            .lines()
            .filter_map(|line| line.strip_prefix("data:"))
            .map(|d| d.strip_prefix(' ').unwrap_or(d))
            .collect::<Vec<_>>()
            .join("\n");
        if data.is_empty() {
            return;
        }
        if data == "[DONE]" {
            self.finished = true;
            return;
        }
        let Ok(value) = serde_json::from_str::<Value>(&data) else { return };
        match self.kind {
            ProviderKind::Openai => {
                if let Some(usage) = value.get("usage").filter(|u| u.is_object()) {
                    self.saw_usage = true;
                    self.tokens = Tokens {
                        input: number(usage, "/prompt_tokens"),
                        output: number(usage, "/completion_tokens"),
                        cached: number(usage, "/prompt_tokens_details/cached_tokens"),
                    };
                }
                if let Some(choices) = value.get("choices").and_then(Value::as_array) {
                    for choice in choices {
                        if let Some(text) = choice.pointer("/delta/content").and_then(Value::as_str) {
                            self.text.push_str(text);
                        }
                    }
                }
            }
            ProviderKind::Anthropic => match value.get("type").and_then(Value::as_str) {
                Some("message_start") => {
                    let usage = value.pointer("/message/usage").cloned().unwrap_or(Value::Null);
                    let cached = number(&usage, "/cache_read_input_tokens");
                    self.tokens.input =
                        number(&usage, "/input_tokens") + cached + number(&usage, "/cache_creation_input_tokens");
                    self.tokens.cached = cached;
                    self.tokens.output = number(&usage, "/output_tokens");
                    self.saw_usage = true;
                }
                Some("content_block_delta") => {
                    if let Some(text) = value.pointer("/delta/text").and_then(Value::as_str) {
                        self.text.push_str(text);
                    }
                }
                Some("message_delta") => {
                    if let Some(output) = value.pointer("/usage/output_tokens").and_then(Value::as_u64) {
                        self.tokens.output = output;
                    }
                }
                Some("message_stop") => self.finished = true,
                _ => {}
            },
        }
    }
}

/// The end of the first complete event in `buf`: (length of the event, length of the
/// blank-line separator).
fn find_event_end(buf: &[u8]) -> Option<(usize, usize)> {
    let mut i = 0;
    while i + 1 < buf.len() {
        if buf[i] == b'\n' && buf[i + 1] == b'\n' {
            return Some((i, 2));
        }
        if i + 3 < buf.len() && &buf[i..i + 4] == b"\r\n\r\n" {
            return Some((i, 4));
        }
        i += 1;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn openai_stream_usage_and_text_are_collected_across_chunk_boundaries() {
        let stream = "data: {\"choices\":[{\"delta\":{\"content\":\"Hel\"}}]}\n\ndata: {\"choices\":[{\"delta\":{\"content\":\"lo\"}}]}\n\ndata: {\"choices\":[],\"usage\":{\"prompt_tokens\":7,\"completion_tokens\":2,\"prompt_tokens_details\":{\"cached_tokens\":3}}}\n\ndata: [DONE]\n\n";
        let mut meter = StreamMeter::new(ProviderKind::Openai);
        for chunk in stream.as_bytes().chunks(5) {
            meter.feed(chunk);
        }
        assert_eq!(meter.text, "Hello");
        assert!(meter.saw_usage && meter.finished);
        assert_eq!(meter.tokens, Tokens { input: 7, output: 2, cached: 3 });
    }

    #[test]
    fn anthropic_stream_usage_comes_from_start_and_delta() {
        let stream = "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"usage\":{\"input_tokens\":10,\"output_tokens\":1}}}\n\nevent: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"Hi\"}}\n\nevent: message_delta\ndata: {\"type\":\"message_delta\",\"usage\":{\"output_tokens\":4}}\n\nevent: message_stop\ndata: {\"type\":\"message_stop\"}\n\n";
        let mut meter = StreamMeter::new(ProviderKind::Anthropic);
        meter.feed(stream.as_bytes());
        assert_eq!((meter.text.as_str(), meter.tokens.input, meter.tokens.output, meter.finished), ("Hi", 10, 4, true));
    }

    #[test]
    fn tokens_are_counted_with_cl100k() {
        assert_eq!(count_tokens("hello world"), 2);
        assert_eq!(count_tokens(""), 0);
        // Long text is counted in pieces: near the whole count, never wildly off.
        let prose = "The quick brown fox jumps over the lazy dog. ".repeat(2_000);
        let whole = tiktoken_rs::cl100k_base().unwrap().encode_ordinary(&prose).len() as u64;
        let pieces = count_tokens(&prose);
        assert!(pieces >= whole && pieces <= whole + whole / 50, "{pieces} against {whole}");
        // A run with no whitespace is cut hard, and past the counted bytes the rest is
        // estimated from its length.
        let word = "a".repeat(3 << 20);
        let estimate = count_tokens(&word);
        assert!(estimate >= ((2 << 20) / 3) as u64, "{estimate}");
        assert!(count_tokens(&"é".repeat(5_000)) > 0);
        let body = serde_json::json!({"system": "be brief", "messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}]}]});
        assert_eq!(request_text(&body), "be brief\nhi\n");
    }
}
