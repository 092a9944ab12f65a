//! The console door: `console.log/info/warn/error` (and Python's `print`), the one
//! door every execution has. It owns the output cap and the line stream.
//!
//! Each line costs its bytes plus [`LINE_COST`] against `limits.output_bytes`; passing
//! the cap keeps what fits, adds [`TRUNCATED`], and ends the execution with
//! `output_limit`. Lines also go to a live stream when the caller asked for one, at
//! most [`LINE_BUFFER`] ahead of its reader.

use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use super::error::ExecError;
use crate::error::Kind;

/// One console line.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogLine {
    pub level: LogLevel,
    pub message: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogLevel {
    Log,
    Info,
    Warn,
    Error,
}

impl LogLevel {
    /// The level the guest ABI numbers `level`.
    pub(crate) fn from_abi(level: i32) -> Self {
        match level {
            1 => Self::Info,
            2 => Self::Warn,
            3 => Self::Error,
            _ => Self::Log,
        }
    }
}

/// The marker appended when console output is cut at its cap.
pub const TRUNCATED: &str = "[truncated]";

/// What every console line costs against `output_bytes` on top of its own bytes.
///
/// A line is more than its text wherever it goes: an object on the host, a JSON
/// object in the response and the stored result, an event on a stream. Charging each
/// one this much makes an empty line cost something, so `for(;;) console.log('')`
/// ends at the output cap (64 KiB by default: 2,048 empty lines) instead of making
/// millions of lines until its fuel runs out.
pub const LINE_COST: u64 = 32;

/// Console lines buffered for a live stream (`Accept: text/event-stream`, a background
/// execution's followers, MCP progress) before the stream falls behind. A stream that
/// falls behind misses lines, and is told how many; the result carries every line.
pub const LINE_BUFFER: usize = 256;

/// Where an execution's console lines go as they are written (see [`LINE_BUFFER`]).
pub type LineSender = mpsc::Sender<LogLine>;

/// One execution's console.
#[derive(Debug)]
pub(crate) struct Console {
    /// `limits.output_bytes`.
    cap: u64,
    /// What the lines so far cost.
    used: u64,
    pub(crate) lines: Vec<LogLine>,
    stream: Option<LineSender>,
    /// Lines the live stream missed since it last took one (it fell behind).
    skipped: u64,
}

impl Console {
    pub(crate) fn new(cap: u64, stream: Option<LineSender>) -> Self {
        Self { cap, used: 0, lines: Vec::new(), stream, skipped: 0 }
    }

    /// A paused execution's console, going on: `lines` and what they cost kept.
    pub(crate) fn resumed(cap: u64, stream: Option<LineSender>, lines: Vec<LogLine>, used: u64) -> Self {
        Self { cap, used, lines, stream, skipped: 0 }
    }

    /// The live stream, handed to the console that goes on from this one.
    pub(crate) fn take_stream(&mut self) -> Option<LineSender> {
        self.stream.take()
    }

    /// What the lines so far cost, against the cap.
    pub(crate) fn used(&self) -> u64 {
        self.used
    }

    /// How many bytes of a `len`-byte line to read from the guest: never more than
    /// the cap could take (and one more, to find where a cut falls).
    pub(crate) fn wanted(&self, len: u64) -> u64 {
        len.min(self.room().saturating_sub(LINE_COST).saturating_add(1))
    }

    fn room(&self) -> u64 {
        self.cap.saturating_sub(self.used)
    }

    /// Writes one line of `len` bytes (of which `bytes` were read, see
    /// [`Console::wanted`]). Past the cap it keeps what fits, adds [`TRUNCATED`] and
    /// returns the `output_limit` error that ends the execution.
    pub(crate) fn write(&mut self, level: LogLevel, bytes: &[u8], len: u64) -> Result<(), ExecError> {
        if len + LINE_COST <= self.room() {
            self.used += bytes.len() as u64 + LINE_COST;
            self.push(LogLine { level, message: String::from_utf8_lossy(bytes).into_owned() });
            return Ok(());
        }
        let mut cut = self.room().saturating_sub(LINE_COST) as usize;
        while cut > 0 && !is_char_boundary(bytes, cut) {
            cut -= 1;
        }
        if cut > 0 {
            self.push(LogLine { level, message: String::from_utf8_lossy(&bytes[..cut]).into_owned() });
        }
        self.used = self.cap;
        self.push(LogLine { level: LogLevel::Warn, message: TRUNCATED.into() });
        Err(ExecError::new(Kind::OutputLimit, format!("console output passed its {}-byte limit", self.cap)))
    }

    fn push(&mut self, line: LogLine) {
        if let Some(stream) = &self.stream {
            // A stream that fell behind is told what it missed before its next line;
            // a closed one only means the client went away, and the run goes on.
            if self.skipped > 0 {
                let note = LogLine {
                    level: LogLevel::Warn,
                    message: format!(
                        "[{} lines not streamed: the stream fell behind; the result has them]",
                        self.skipped
                    ),
                };
                if stream.try_send(note).is_ok() {
                    self.skipped = 0;
                }
            }
            if self.skipped > 0 || stream.try_send(line.clone()).is_err() {
                self.skipped += u64::from(!stream.is_closed());
            }
        }
        self.lines.push(line);
    }
}

fn is_char_boundary(bytes: &[u8], at: usize) -> bool {
    at >= bytes.len() || (bytes[at] as i8) >= -0x40
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_line_costs_its_bytes_and_the_line_cost() {
        let mut console = Console::new(100, None);
        for _ in 0..3 {
            console.write(LogLevel::Log, b"", 0).unwrap();
        }
        // 96 used: a line of 4 bytes costs 36, more than the 4 left.
        let ended = console.write(LogLevel::Log, b"abcd", 4).unwrap_err();
        assert_eq!(ended.kind, Kind::OutputLimit);
        let messages: Vec<&str> = console.lines.iter().map(|l| l.message.as_str()).collect();
        assert_eq!(messages, ["", "", "", TRUNCATED]);
        // A cut never splits a character.
        let mut console = Console::new(LINE_COST + 2, None);
        let text = "é!".as_bytes();
        assert!(console.write(LogLevel::Log, text, 3).is_err());
        assert_eq!(console.lines[0].message, "é");
    }
}
