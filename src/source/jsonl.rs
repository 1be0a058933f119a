//! The one JSON Lines reader behind the file source, `preview` and `send`: it streams lines from
//! any [`AsyncBufRead`], never holds more than [`MAX_LINE_BYTES`] + 1 bytes of a line, and hands
//! lines that cannot be message bodies (not UTF-8, too long) to the caller instead of failing.
//!
//! Sharing it keeps the three commands in agreement on what a line is: line numbers count every
//! line (blank ones too, so they match an editor and the file source's message ids), `\n` and
//! `\r\n` both end a line, a last line without a newline counts, and blank lines are skipped.

use std::fmt;
use tokio::io::{AsyncBufRead, AsyncBufReadExt};

/// The longest line read whole: 1 MiB, the largest SQS message body, so any line the file
/// source accepts could also have been a queue message, and `send` never ships a line SQS would
/// refuse for its size.
pub const MAX_LINE_BYTES: usize = 1 << 20;

/// How much of an oversized line is kept (for the reject body): enough to recognise the record
/// when investigating, small enough that a file of huge lines costs no memory.
pub const OVERSIZED_PREFIX_BYTES: usize = 4096;

// The prefix is cut from the bytes held while the line was still under the cap.
const _: () = assert!(OVERSIZED_PREFIX_BYTES <= MAX_LINE_BYTES);

/// One non-blank line of a JSON Lines input.
pub struct Line {
    /// 1-based, counting blank lines too.
    pub number: u64,
    /// What the line holds.
    pub kind: LineKind,
}

/// The content of a line, by whether it can be a message body.
pub enum LineKind {
    /// A UTF-8 line of at most [`MAX_LINE_BYTES`], without its line ending.
    Text(String),
    /// A line of at most [`MAX_LINE_BYTES`] that is not UTF-8: its raw bytes, without the line
    /// ending, so nothing is lost.
    NotUtf8(Vec<u8>),
    /// A line longer than [`MAX_LINE_BYTES`]. Only its first [`OVERSIZED_PREFIX_BYTES`] are kept
    /// (raw bytes: the cut may split a character, and the line may not be UTF-8 at all).
    Oversized {
        /// The first bytes of the line, at most [`OVERSIZED_PREFIX_BYTES`].
        prefix: Vec<u8>,
        /// The line's full length in bytes, without the line ending.
        len: u64,
    },
}

// Lines may carry PII: `Debug` shows sizes only.
impl fmt::Debug for Line {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("Line");
        d.field("number", &self.number);
        match &self.kind {
            LineKind::Text(t) => d.field("text_len", &t.len()),
            LineKind::NotUtf8(b) => d.field("not_utf8_len", &b.len()),
            LineKind::Oversized { prefix, len } => d
                .field("oversized_len", len)
                .field("prefix_len", &prefix.len()),
        };
        d.finish()
    }
}

/// Reads [`Line`]s from a buffered async reader (a file, a pipe, bytes in a test).
pub struct JsonLinesReader<R> {
    reader: R,
    line: LineBuf,
    number: u64,
}

impl<R: AsyncBufRead + Unpin> JsonLinesReader<R> {
    /// Reads from `reader`; give it a [`tokio::io::BufReader`] for files.
    pub fn new(reader: R) -> Self {
        Self {
            reader,
            line: LineBuf::default(),
            number: 0,
        }
    }

    /// The next non-blank line, or `None` at the end of the input. Errors are read errors only:
    /// bad content is a [`LineKind`], not an error, so one bad line never hides the rest.
    pub async fn next_line(&mut self) -> std::io::Result<Option<Line>> {
        loop {
            // Take bytes straight from the reader's buffer up to the next '\n', so a long line is
            // copied only while it is under the cap and merely counted after that.
            let (used, end) = {
                let available = self.reader.fill_buf().await?;
                if available.is_empty() {
                    (0, LineEnd::Eof)
                } else if let Some(i) = available.iter().position(|&b| b == b'\n') {
                    self.line.push(&available[..i]);
                    (i + 1, LineEnd::Newline)
                } else {
                    self.line.push(available);
                    (available.len(), LineEnd::NotYet)
                }
            };
            self.reader.consume(used);
            let newline = match end {
                LineEnd::NotYet => continue,
                // Nothing since the last line: the input is done (also on every later call).
                LineEnd::Eof if self.line.len == 0 => return Ok(None),
                // A last line without a newline still counts.
                LineEnd::Eof => false,
                LineEnd::Newline => true,
            };
            self.number += 1;
            if let Some(kind) = self.line.finish(newline) {
                return Ok(Some(Line {
                    number: self.number,
                    kind,
                }));
            }
        }
    }
}

/// Why a read from the underlying buffer stopped.
enum LineEnd {
    /// The buffer ended inside the line: read more.
    NotYet,
    /// A '\n' ended the line.
    Newline,
    /// The input ended.
    Eof,
}

/// The line being read. Holds the whole line while it may still fit the cap, then only the
/// prefix; `len` keeps counting either way.
#[derive(Default)]
struct LineBuf {
    /// The line's bytes so far: all of them up to [`MAX_LINE_BYTES`] + 1 (one more than the cap,
    /// because a final '\r' before the '\n' is not part of the line), afterwards the prefix.
    bytes: Vec<u8>,
    /// Bytes seen so far, without the '\n'.
    len: u64,
    /// Whether the line outgrew `bytes` and only its prefix is held.
    oversized: bool,
    /// For an oversized line only: whether every byte so far was whitespace.
    blank: bool,
    /// The last byte seen, to recognise "\r\n" when the '\r' is no longer held.
    last: Option<u8>,
}

impl LineBuf {
    /// Adds bytes of the current line (no '\n' among them).
    fn push(&mut self, chunk: &[u8]) {
        let Some(&last) = chunk.last() else {
            return;
        };
        self.len += chunk.len() as u64;
        self.last = Some(last);
        if !self.oversized {
            if self.bytes.len() + chunk.len() <= MAX_LINE_BYTES + 1 {
                self.bytes.extend_from_slice(chunk);
                return;
            }
            // Over the cap even if the line ends in "\r\n": from here on keep only the prefix.
            // Blankness must still be known (a huge run of spaces is a blank line, as it is under
            // the cap), so it is tracked byte by byte instead of by `str::trim` on the whole line.
            self.oversized = true;
            self.blank = self.bytes.iter().all(|&b| is_blank_byte(b));
            self.bytes.truncate(OVERSIZED_PREFIX_BYTES);
        }
        let room = OVERSIZED_PREFIX_BYTES.saturating_sub(self.bytes.len());
        self.bytes
            .extend_from_slice(&chunk[..room.min(chunk.len())]);
        // `all` stops at the first non-blank byte, so a real line costs almost nothing here.
        self.blank = self.blank && chunk.iter().all(|&b| is_blank_byte(b));
    }

    /// Ends the current line (`newline`: it ended with '\n', not at the end of the input) and
    /// makes ready for the next. `None` for a blank line.
    fn finish(&mut self, newline: bool) -> Option<LineKind> {
        // "\r\n" ends a line like "\n" (as `BufRead::lines` has it); a '\r' not followed by '\n'
        // is content.
        let crlf = newline && self.last == Some(b'\r');
        let len = self.len - u64::from(crlf);
        let kind = if !self.oversized && len <= MAX_LINE_BYTES as u64 {
            if crlf {
                self.bytes.pop();
            }
            match std::str::from_utf8(&self.bytes) {
                Ok(text) if text.trim().is_empty() => None,
                // Copied, not moved, so `bytes` keeps its capacity for the next line.
                Ok(text) => Some(LineKind::Text(text.to_owned())),
                Err(_) => Some(LineKind::NotUtf8(self.bytes.clone())),
            }
        } else {
            // Either flagged while reading, or exactly one byte over with no '\r' to drop.
            let blank = if self.oversized {
                self.blank
            } else {
                self.bytes.iter().all(|&b| is_blank_byte(b))
            };
            (!blank).then(|| LineKind::Oversized {
                prefix: self.bytes[..self.bytes.len().min(OVERSIZED_PREFIX_BYTES)].to_vec(),
                len,
            })
        };
        self.bytes.clear();
        self.len = 0;
        self.oversized = false;
        self.blank = false;
        self.last = None;
        kind
    }
}

/// Whitespace for an oversized line's blankness: the ASCII part of what `str::trim` removes
/// (non-ASCII whitespace would need decoding across reads; a huge line of it is a reject).
fn is_blank_byte(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | b'\r' | 0x0b | 0x0c)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    /// Every line of `input`, as (number, kind).
    async fn read_all(input: &[u8]) -> Vec<Line> {
        let mut reader = JsonLinesReader::new(input);
        let mut lines = Vec::new();
        while let Some(line) = reader.next_line().await.unwrap() {
            lines.push(line);
        }
        assert!(
            reader.next_line().await.unwrap().is_none(),
            "the end stays the end"
        );
        lines
    }

    fn text(line: &Line) -> &str {
        match &line.kind {
            LineKind::Text(t) => t,
            other => panic!("line {} is not text: {:?}", line.number, other_kind(other)),
        }
    }

    fn other_kind(kind: &LineKind) -> &'static str {
        match kind {
            LineKind::Text(_) => "text",
            LineKind::NotUtf8(_) => "not UTF-8",
            LineKind::Oversized { .. } => "oversized",
        }
    }

    #[tokio::test]
    async fn crlf_blank_lines_and_a_last_line_without_newline() {
        let lines =
            read_all(b"{\"a\": 1}\r\n\n   \r\n\t\n{\"b\": 2}\n{\"c\": \"x\r\"}\r\n{\"d\": 4}")
                .await;
        let numbers: Vec<u64> = lines.iter().map(|l| l.number).collect();
        assert_eq!(numbers, [1, 5, 6, 7], "blank lines are skipped but counted");
        assert_eq!(text(&lines[0]), "{\"a\": 1}", "CRLF is stripped");
        assert_eq!(text(&lines[1]), "{\"b\": 2}");
        assert_eq!(
            text(&lines[2]),
            "{\"c\": \"x\r\"}",
            "an inner '\\r' is kept"
        );
        assert_eq!(
            text(&lines[3]),
            "{\"d\": 4}",
            "a last line without newline counts"
        );
    }

    #[tokio::test]
    async fn edge_inputs() {
        assert!(read_all(b"").await.is_empty());
        assert!(read_all(b"\n\n \r\n").await.is_empty());
        let lines = read_all(b"x\r").await;
        assert_eq!(
            text(&lines[0]),
            "x\r",
            "a '\\r' at the very end is not a line ending"
        );
    }

    #[tokio::test]
    async fn a_line_that_is_not_utf8_keeps_its_bytes() {
        let lines = read_all(b"{\"a\": 1}\n{\"c\": \"\xff\xfe\"}\r\n{\"b\": 2}\n").await;
        assert_eq!(lines.len(), 3);
        match &lines[1].kind {
            LineKind::NotUtf8(raw) => assert_eq!(raw, b"{\"c\": \"\xff\xfe\"}"),
            other => panic!("expected not UTF-8, got {}", other_kind(other)),
        }
        assert_eq!(lines[1].number, 2);
        assert_eq!(text(&lines[2]), "{\"b\": 2}", "the next line is unaffected");
    }

    /// A line of `len` bytes: `{"v":"xxx…"}`.
    fn json_line(len: usize) -> Vec<u8> {
        let mut line = b"{\"v\":\"".to_vec();
        line.resize(len - 2, b'x');
        line.extend_from_slice(b"\"}");
        line
    }

    #[tokio::test]
    async fn a_line_at_the_cap_is_text_and_one_byte_more_is_oversized() {
        for ending in [&b"\n"[..], b"\r\n", b""] {
            let at_cap = json_line(MAX_LINE_BYTES);
            let over = json_line(MAX_LINE_BYTES + 1);
            let mut input = at_cap.clone();
            input.extend_from_slice(b"\n");
            input.extend_from_slice(&over);
            input.extend_from_slice(ending);
            let lines = read_all(&input).await;
            assert_eq!(lines.len(), 2);
            assert_eq!(text(&lines[0]).as_bytes(), at_cap);
            match &lines[1].kind {
                LineKind::Oversized { prefix, len } => {
                    assert_eq!(*len, MAX_LINE_BYTES as u64 + 1, "ending {ending:?}");
                    assert_eq!(prefix[..], over[..OVERSIZED_PREFIX_BYTES]);
                }
                other => panic!("expected oversized, got {}", other_kind(other)),
            }
        }
        // With "\r\n", a line of exactly the cap is held as cap + 1 bytes before the '\r' is
        // dropped: still text.
        let mut input = json_line(MAX_LINE_BYTES);
        input.extend_from_slice(b"\r\n");
        assert_eq!(text(&read_all(&input).await[0]).len(), MAX_LINE_BYTES);
    }

    #[tokio::test]
    async fn a_huge_line_is_counted_not_held() {
        const HUGE: u64 = 16 * MAX_LINE_BYTES as u64;
        // Generated as it is read: the test itself never holds the line either.
        let input = tokio::io::repeat(b'y')
            .take(HUGE)
            .chain(&b"\r\n{\"after\": 1}\n"[..]);
        let mut reader = JsonLinesReader::new(tokio::io::BufReader::new(input));
        let line = reader.next_line().await.unwrap().unwrap();
        match &line.kind {
            LineKind::Oversized { prefix, len } => {
                assert_eq!(*len, HUGE);
                assert!(prefix.len() <= OVERSIZED_PREFIX_BYTES);
                assert!(prefix.capacity() <= OVERSIZED_PREFIX_BYTES);
                assert!(prefix.iter().all(|&b| b == b'y'));
            }
            other => panic!("expected oversized, got {}", other_kind(other)),
        }
        // What the reader held while reading: at most the cap and one byte (with the doubling
        // growth of a Vec, its capacity stays under twice that).
        assert!(reader.line.bytes.capacity() <= 2 * (MAX_LINE_BYTES + 1));
        let next = reader.next_line().await.unwrap().unwrap();
        assert_eq!((next.number, text(&next)), (2, "{\"after\": 1}"));
        assert!(reader.next_line().await.unwrap().is_none());
    }

    #[tokio::test]
    async fn a_huge_blank_line_is_blank() {
        let input = tokio::io::repeat(b' ')
            .take(3 * MAX_LINE_BYTES as u64)
            .chain(&b"\n{}\n"[..]);
        let mut reader = JsonLinesReader::new(tokio::io::BufReader::new(input));
        let line = reader.next_line().await.unwrap().unwrap();
        assert_eq!((line.number, text(&line)), (2, "{}"));
    }

    #[test]
    fn debug_shows_sizes_not_content() {
        let line = Line {
            number: 3,
            kind: LineKind::Text("secret@example.com".into()),
        };
        let shown = format!("{line:?}");
        assert!(!shown.contains("secret"), "{shown}");
        assert!(shown.contains("text_len: 18"), "{shown}");
    }
}
