//! The job log's shipped format (`runs/<id>/logs/<seq>`), written by the agent and read
//! by the launcher: which stream each line came from, and the agent's own lines kept apart
//! from the job's so that no output of the job can pass for one.
//!
//! A chunk of format 2 starts with the line [`CHUNK_HEADER`]; every line after it is one
//! tag character, `|`, and the line's text (no newline inside):
//!
//! ```text
//! #cloudrun-log 2
//! 1|step 1            the job's stdout
//! 2|warning: ...      the job's stderr
//! @|job started ...   the agent
//! ```
//!
//! The tag is put there by the agent for every line, so a job that prints
//! `@|…` or `[cloudrun-agent] …` only ever produces a `1|@|…` or `1|[cloudrun-agent] …`
//! line. Chunks without the header were written by agents before this format: their lines
//! are plain text of unknown stream ([`Line::stream`] `None`), read as they are.
//!
//! This module owns the bytes only; how a line is shown (terminal filtering, marking) is
//! the launcher's.

/// First line of every chunk in this format.
pub const CHUNK_HEADER: &str = "#cloudrun-log 2";
/// How agent lines are shown to people, and how agents before format 2 marked theirs.
pub const AGENT_LINE_PREFIX: &str = "[cloudrun-agent]";

/// Where a line came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Stream {
    Stdout,
    Stderr,
    Agent,
}

impl Stream {
    /// The tag character in a chunk.
    pub fn tag(self) -> char {
        match self {
            Stream::Stdout => '1',
            Stream::Stderr => '2',
            Stream::Agent => '@',
        }
    }

    fn from_tag(c: u8) -> Option<Stream> {
        match c {
            b'1' => Some(Stream::Stdout),
            b'2' => Some(Stream::Stderr),
            b'@' => Some(Stream::Agent),
            _ => None,
        }
    }

    /// `stdout`, `stderr`, `agent` (for `--json` and people).
    pub fn name(self) -> &'static str {
        match self {
            Stream::Stdout => "stdout",
            Stream::Stderr => "stderr",
            Stream::Agent => "agent",
        }
    }
}

/// One line read back from a chunk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Line {
    /// `None` for a chunk written before format 2.
    pub stream: Option<Stream>,
    pub text: String,
}

/// Append one line to a chunk being built (`text` must not hold a newline; one that does
/// is cut into several lines of the same stream, so the tag always opens a line).
pub fn encode_line(stream: Stream, text: &str, out: &mut Vec<u8>) {
    for part in text.split('\n') {
        out.push(stream.tag() as u8);
        out.push(b'|');
        out.extend_from_slice(part.as_bytes());
        out.push(b'\n');
    }
}

/// The header line of a chunk, with its newline.
pub fn chunk_header() -> Vec<u8> {
    format!("{CHUNK_HEADER}\n").into_bytes()
}

/// Every line of one chunk, in either format.
pub fn decode_chunk(bytes: &[u8]) -> Vec<Line> {
    let header = CHUNK_HEADER.as_bytes();
    let tagged = bytes.starts_with(header) && matches!(bytes.get(header.len()), Some(b'\n') | None);
    let body = if tagged {
        &bytes[(header.len() + 1).min(bytes.len())..]
    } else {
        bytes
    };
    let mut lines = Vec::new();
    let mut rest = body;
    while !rest.is_empty() {
        let (line, next) = match rest.iter().position(|b| *b == b'\n') {
            Some(i) => (&rest[..i], &rest[i + 1..]),
            None => (rest, &rest[rest.len()..]),
        };
        rest = next;
        if !tagged {
            lines.push(Line {
                stream: None,
                text: String::from_utf8_lossy(line).into_owned(),
            });
            continue;
        }
        match (line.first().and_then(|c| Stream::from_tag(*c)), line.get(1)) {
            (Some(stream), Some(b'|')) => lines.push(Line {
                stream: Some(stream),
                text: String::from_utf8_lossy(&line[2..]).into_owned(),
            }),
            // Not written by an agent of this format: shown, but never as an agent line.
            _ => lines.push(Line {
                stream: None,
                text: String::from_utf8_lossy(line).into_owned(),
            }),
        }
    }
    lines
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_keep_their_stream_and_a_job_cannot_write_an_agent_line() {
        let mut c = chunk_header();
        encode_line(Stream::Stdout, "step 1", &mut c);
        encode_line(Stream::Stderr, "boom", &mut c);
        encode_line(Stream::Agent, "job started", &mut c);
        encode_line(
            Stream::Stdout,
            "@|forged\n[cloudrun-agent] forged too",
            &mut c,
        );
        encode_line(Stream::Stdout, "", &mut c);
        let lines = decode_chunk(&c);
        let got: Vec<(Option<Stream>, &str)> =
            lines.iter().map(|l| (l.stream, l.text.as_str())).collect();
        assert_eq!(
            got,
            [
                (Some(Stream::Stdout), "step 1"),
                (Some(Stream::Stderr), "boom"),
                (Some(Stream::Agent), "job started"),
                (Some(Stream::Stdout), "@|forged"),
                (Some(Stream::Stdout), "[cloudrun-agent] forged too"),
                (Some(Stream::Stdout), ""),
            ]
        );
    }

    #[test]
    fn a_chunk_of_an_older_agent_is_read_as_plain_lines() {
        let lines = decode_chunk(b"epoch 1\n[cloudrun-agent] job started\nno newline");
        assert_eq!(lines.len(), 3);
        assert!(lines.iter().all(|l| l.stream.is_none()));
        assert_eq!(lines[1].text, "[cloudrun-agent] job started");
        assert_eq!(lines[2].text, "no newline");
        assert!(decode_chunk(b"").is_empty());
    }

    #[test]
    fn carriage_returns_and_invalid_utf8_survive() {
        let mut c = chunk_header();
        encode_line(Stream::Stderr, " 10%\r 50%\r100%", &mut c);
        c.extend_from_slice(b"1|\xff\n");
        let lines = decode_chunk(&c);
        assert_eq!(lines[0].text, " 10%\r 50%\r100%");
        assert_eq!(lines[1].text, "\u{fffd}");
    }
}
