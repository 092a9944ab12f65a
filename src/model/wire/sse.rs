//! Server-sent events as the providers frame them: `event:` and `data:` lines, an
//! event ending at a blank line (`\n\n` or `\r\n\r\n`), split anywhere across chunks.

use bytes::Bytes;

/// One event: its `event:` name (when it has one) and its `data:` lines joined.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SseEvent {
    pub event: Option<String>,
    pub data: String,
}

/// Cuts a byte stream into events.
#[derive(Debug, Default)]
pub struct SseParser {
    pending: Vec<u8>,
}

impl SseParser {
    /// The whole events `bytes` completes, in order.
    pub fn feed(&mut self, bytes: &[u8]) -> Vec<SseEvent> {
        self.pending.extend_from_slice(bytes);
        let mut events = Vec::new();
        let mut start = 0;
        while let Some((end, separator)) = event_end(&self.pending[start..]) {
            if let Some(event) = parse(&self.pending[start..start + end]) {
                events.push(event);
            }
            start += end + separator;
        }
        self.pending.drain(..start);
        events
    }

    /// What is left when the stream ends: an event whose blank line never came.
    pub fn finish(&mut self) -> Option<SseEvent> {
        let rest = std::mem::take(&mut self.pending);
        parse(&rest)
    }
}

/// The end of the first complete event in `buf`: (its length, the separator's).
fn event_end(buf: &[u8]) -> Option<(usize, usize)> {
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

fn parse(raw: &[u8]) -> Option<SseEvent> {
    let text = String::from_utf8_lossy(raw);
    let mut event = SseEvent::default();
    let mut data: Vec<&str> = Vec::new();
    for line in text.lines() {
        let line = line.strip_suffix('\r').unwrap_or(line);
        if let Some(value) = line.strip_prefix("data:") {
            data.push(value.strip_prefix(' ').unwrap_or(value));
        } else if let Some(value) = line.strip_prefix("event:") {
            event.event = Some(value.trim().to_string());
        }
    }
    if data.is_empty() && event.event.is_none() {
        return None;
    }
    event.data = data.join("\n");
    Some(event)
}

/// One event as bytes: `event: NAME` (when named) and the data on one line.
pub fn frame(event: Option<&str>, data: &str) -> Bytes {
    let mut out = String::with_capacity(data.len() + 32);
    if let Some(event) = event {
        out.push_str("event: ");
        out.push_str(event);
        out.push('\n');
    }
    out.push_str("data: ");
    out.push_str(data);
    out.push_str("\n\n");
    Bytes::from(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_split_anywhere_are_whole_once_their_blank_line_comes() {
        let stream = b"event: a\ndata: {\"x\":1}\n\n: comment\n\ndata: one\ndata: two\r\n\r\ndata: [DONE]\n\n";
        for size in [1, 2, 3, 7, stream.len()] {
            let mut parser = SseParser::default();
            let events: Vec<SseEvent> = stream.chunks(size).flat_map(|c| parser.feed(c)).collect();
            assert_eq!(
                events,
                [
                    SseEvent { event: Some("a".into()), data: "{\"x\":1}".into() },
                    SseEvent { event: None, data: "one\ntwo".into() },
                    SseEvent { event: None, data: "[DONE]".into() },
                ],
                "chunks of {size}"
            );
        }
        let mut parser = SseParser::default();
        assert!(parser.feed(b"data: cut").is_empty());
        assert_eq!(parser.finish().unwrap().data, "cut");
    }
}
