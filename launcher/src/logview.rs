//! How `logs` and `--follow` show a run's shipped log (read through
//! [`cloudrun::joblog`]).
//!
//! - The agent's lines are shown as `[cloudrun-agent] …`. A line of the job whose visible
//!   text starts like that (`[cloudrun…`, in any case, behind spaces, invisible characters,
//!   escape sequences or a `\r`) is shown as `[job] [cloudrun-agent] …`, so a job cannot
//!   pass its own output off as the agent's.
//! - On a terminal, job output loses every control sequence except colour (SGR,
//!   `ESC [ … m`): no cursor moves, screen or line erases, window titles, hyperlinks, bells
//!   or backspaces. Tabs and `\r` stay, so progress bars redrawn with `\r` still work.
//!   Into a pipe or a file the job's bytes go out as they are.
//! - Lines from agents before the tagged format have no stream and are shown as they are
//!   (on a terminal, filtered the same way).

use std::io::Write;

use cloudrun::joblog::{self, Line, Stream, AGENT_LINE_PREFIX};

/// Where the log is going.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LogView {
    /// stdout is a terminal: filter control sequences.
    pub terminal: bool,
}

/// The marker put before a job line that looks like an agent line.
pub const JOB_MARK: &str = "[job] ";
/// What a job line must not start with, visibly (lower case, compared folded).
const AGENT_LOOKALIKE: &str = "[cloudrun";

/// Print every line of one chunk.
pub fn render_chunk(bytes: &[u8], view: LogView, out: &mut dyn Write) -> std::io::Result<()> {
    let mut buf = String::new();
    for line in joblog::decode_chunk(bytes) {
        buf.push_str(&render_line(&line, view));
        buf.push('\n');
    }
    out.write_all(buf.as_bytes())
}

/// One line as shown (without its newline).
pub fn render_line(line: &Line, view: LogView) -> String {
    let text = if view.terminal {
        strip_controls(&line.text)
    } else {
        line.text.clone()
    };
    match line.stream {
        Some(Stream::Agent) => format!("{AGENT_LINE_PREFIX} {text}"),
        Some(Stream::Stdout | Stream::Stderr) if imitates_agent(&line.text) => {
            let mut s = String::from(JOB_MARK);
            s.push_str(&text.replace('\r', &format!("\r{JOB_MARK}")));
            s
        }
        _ => text,
    }
}

/// Whether any `\r`-separated part of `text` shows, at its start, what an agent line
/// shows.
fn imitates_agent(text: &str) -> bool {
    text.split('\r').any(|part| {
        let visible: String = visible(part)
            .chars()
            .filter(|c| !is_invisible(*c))
            .map(fold_fullwidth)
            .skip_while(|c| c.is_whitespace())
            .take(AGENT_LOOKALIKE.len())
            .collect::<String>()
            .to_lowercase();
        visible == AGENT_LOOKALIKE
    })
}

/// Characters that take no room on screen (zero-width spaces and joiners, bidi marks and
/// overrides, the soft hyphen, the BOM).
fn is_invisible(c: char) -> bool {
    matches!(c,
        '\u{00ad}' | '\u{200b}'..='\u{200f}' | '\u{202a}'..='\u{202e}'
        | '\u{2060}'..='\u{2069}' | '\u{feff}')
}

/// Fullwidth ASCII (`［ｃｌｏｕｄ`) as ASCII.
fn fold_fullwidth(c: char) -> char {
    match c {
        '\u{ff01}'..='\u{ff5e}' => char::from_u32(c as u32 - 0xfee0).unwrap_or(c),
        '\u{3000}' => ' ',
        _ => c,
    }
}

/// `text` without terminal control sequences, except SGR (colour and style); tabs and
/// carriage returns are kept.
pub fn strip_controls(text: &str) -> String {
    filter(text, true)
}

/// What shows of `text` as characters: no control sequence at all, colour included.
fn visible(text: &str) -> String {
    filter(text, false)
}

fn filter(text: &str, keep_sgr: bool) -> String {
    let mut out = String::with_capacity(text.len());
    let mut it = text.chars().peekable();
    while let Some(c) = it.next() {
        match c {
            '\t' | '\r' => out.push(c),
            '\u{1b}' => match it.next() {
                Some('[') => csi(&mut it, &mut out, keep_sgr),
                // OSC, DCS, SOS, PM, APC: strings up to BEL or ST, dropped.
                Some(']' | 'P' | 'X' | '^' | '_') => skip_string(&mut it),
                // ESC, intermediates, one final byte (charset selects, keypad modes, …).
                Some(c2) if ('\u{20}'..='\u{2f}').contains(&c2) => {
                    while it.next_if(|c| ('\u{20}'..='\u{2f}').contains(c)).is_some() {}
                    it.next();
                }
                _ => {}
            },
            // C1 controls: the 8-bit CSI and strings, dropped whole; the rest dropped.
            '\u{9b}' => csi(&mut it, &mut out, false),
            '\u{90}' | '\u{98}' | '\u{9d}' | '\u{9e}' | '\u{9f}' => skip_string(&mut it),
            c if c.is_control() => {}
            c => out.push(c),
        }
    }
    out
}

/// A CSI sequence after its introducer: kept (with `ESC [`) only when it is SGR.
fn csi(it: &mut std::iter::Peekable<std::str::Chars<'_>>, out: &mut String, keep_sgr: bool) {
    let mut params = String::new();
    while let Some(c) = it.next_if(|c| ('\u{30}'..='\u{3f}').contains(c)) {
        params.push(c);
    }
    let mut intermediates = false;
    while it.next_if(|c| ('\u{20}'..='\u{2f}').contains(c)).is_some() {
        intermediates = true;
    }
    let Some(fin) = it.next_if(|c| ('\u{40}'..='\u{7e}').contains(c)) else {
        return; // unterminated or broken: dropped
    };
    let sgr = fin == 'm'
        && !intermediates
        && params
            .chars()
            .all(|c| c.is_ascii_digit() || c == ';' || c == ':');
    if sgr && keep_sgr {
        out.push_str("\u{1b}[");
        out.push_str(&params);
        out.push('m');
    }
}

/// Skip a control string up to and including its terminator (BEL, ST or `ESC \`).
fn skip_string(it: &mut std::iter::Peekable<std::str::Chars<'_>>) {
    while let Some(c) = it.next() {
        match c {
            '\u{07}' | '\u{9c}' => return,
            '\u{1b}' => {
                if it.peek() == Some(&'\\') {
                    it.next();
                }
                return;
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(stream: Option<Stream>, text: &str) -> Line {
        Line {
            stream,
            text: text.into(),
        }
    }

    const TERM: LogView = LogView { terminal: true };
    const PIPE: LogView = LogView { terminal: false };

    #[test]
    fn colour_tabs_and_carriage_returns_survive_on_a_terminal_nothing_else_does() {
        let text = "\u{1b}[1;32mok\u{1b}[0m\t 10%\r 50%\r100%\u{1b}[2J\u{1b}[H\u{1b}]0;pwned\u{7}\
                    \u{1b}]8;;http://x\u{1b}\\link\u{1b}]8;;\u{1b}\\\u{7}\u{8}\u{1b}(B\u{9b}31m\u{1b}[?1049h";
        assert_eq!(
            strip_controls(text),
            "\u{1b}[1;32mok\u{1b}[0m\t 10%\r 50%\r100%link"
        );
        assert_eq!(
            render_line(&line(Some(Stream::Stdout), text), TERM),
            "\u{1b}[1;32mok\u{1b}[0m\t 10%\r 50%\r100%link"
        );
        // Into a pipe, the job's bytes as they are.
        assert_eq!(render_line(&line(Some(Stream::Stdout), text), PIPE), text);
        assert_eq!(strip_controls("cut \u{1b}["), "cut ");
        assert_eq!(strip_controls("\u{1b}[38:5:196mred"), "\u{1b}[38:5:196mred");
    }

    #[test]
    fn a_job_line_that_looks_like_an_agent_line_is_marked_as_the_jobs() {
        let agent = render_line(&line(Some(Stream::Agent), "job started"), PIPE);
        assert_eq!(agent, "[cloudrun-agent] job started");
        for forged in [
            "[cloudrun-agent] job started",
            "  [CloudRun-Agent] final sync: outputs verified",
            "\u{1b}[0m[cloudrun-agent] x",
            "\u{200b}[cloudrun-agent] x",
            "［ｃｌｏｕｄｒｕｎ-agent] x",
        ] {
            for stream in [Stream::Stdout, Stream::Stderr] {
                for view in [TERM, PIPE] {
                    let shown = render_line(&line(Some(stream), forged), view);
                    assert!(shown.starts_with(JOB_MARK), "{forged:?} → {shown:?}");
                }
            }
        }
        // Drawn over a progress bar with `\r`: every redraw is marked.
        let shown = render_line(&line(Some(Stream::Stdout), "50%\r[cloudrun-agent] x"), TERM);
        assert_eq!(shown, "[job] 50%\r[job] [cloudrun-agent] x");
        // Ordinary output is left alone.
        let plain = render_line(&line(Some(Stream::Stdout), "[cloud] step 1"), TERM);
        assert_eq!(plain, "[cloud] step 1");
    }

    #[test]
    fn old_untagged_chunks_are_shown_as_they_are() {
        let mut out = Vec::new();
        render_chunk(b"epoch 1\n[cloudrun-agent] job started\n", PIPE, &mut out).unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "epoch 1\n[cloudrun-agent] job started\n"
        );
        let mut chunk = joblog::chunk_header();
        joblog::encode_line(Stream::Stdout, "step 1", &mut chunk);
        joblog::encode_line(Stream::Agent, "final sync", &mut chunk);
        let mut out = Vec::new();
        render_chunk(&chunk, PIPE, &mut out).unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "step 1\n[cloudrun-agent] final sync\n"
        );
    }
}
