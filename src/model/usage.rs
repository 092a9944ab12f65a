//! Reading token usage out of provider responses, whole or streamed, and counting
//! tokens when a provider reports none.

use std::sync::OnceLock;

use serde_json::Value;

/// Tokens of one call.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Tokens {
    /// All input tokens, cached ones included.
    pub input: u64,
    pub output: u64,
    /// Input tokens served from the provider's prompt cache.
    pub cached: u64,
}

impl Tokens {
    /// Takes in a later report of the same call's usage: streams report some counts
    /// at their start and others at their end, each as a running total.
    pub fn merge(&mut self, later: &Tokens) {
        self.input = self.input.max(later.input);
        self.output = self.output.max(later.output);
        self.cached = self.cached.max(later.cached);
    }
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

#[cfg(test)]
mod tests {
    use super::*;

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
