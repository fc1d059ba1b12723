//! The pure parts of a terminal session: output bytes into whole UTF-8
//! text, keystrokes into command lines, and the bounded scrollback.

/// Turns a byte stream into text without splitting a character across
/// two pieces: an incomplete sequence at the end of a read waits for the
/// next read; invalid bytes become U+FFFD.
#[derive(Debug, Default)]
pub struct Utf8Stream {
    pending: Vec<u8>,
}

impl Utf8Stream {
    /// The text of `bytes` after what was pending; keeps the tail of an
    /// incomplete character for the next call.
    pub fn push(&mut self, bytes: &[u8]) -> String {
        self.pending.extend_from_slice(bytes);
        let mut out = String::with_capacity(self.pending.len());
        let mut rest: &[u8] = &self.pending;
        loop {
            match std::str::from_utf8(rest) {
                Ok(s) => {
                    out.push_str(s);
                    rest = &[];
                    break;
                }
                Err(e) => {
                    let (valid, after) = rest.split_at(e.valid_up_to());
                    out.push_str(std::str::from_utf8(valid).expect("checked valid"));
                    match e.error_len() {
                        // An incomplete character at the end: wait for more.
                        None => {
                            rest = after;
                            break;
                        }
                        Some(n) => {
                            out.push('\u{FFFD}');
                            rest = &after[n..];
                        }
                    }
                }
            }
        }
        self.pending = rest.to_vec();
        out
    }

    /// What is left at the end of the stream, as text.
    pub fn finish(&mut self) -> String {
        let rest = std::mem::take(&mut self.pending);
        String::from_utf8_lossy(&rest).into_owned()
    }
}

/// The longest command line kept.
pub const MAX_LINE: usize = 4096;

/// Assembles what a user types into command lines, as a terminal's line
/// discipline would show them: printable text appended, backspace and
/// DEL remove the last character, escape sequences (arrow keys and the
/// like) and other control characters dropped, Ctrl-C and Ctrl-U drop
/// the line, Enter ends it.
#[derive(Debug, Default)]
pub struct LineAssembler {
    line: String,
    escape: Escape,
}

#[derive(Debug, Default, Clone, Copy, PartialEq)]
enum Escape {
    #[default]
    None,
    /// After ESC.
    Start,
    /// Inside a CSI or SS3 sequence (`ESC [` ... final byte).
    Sequence,
    /// Inside an operating-system command (`ESC ]` ... BEL or `ESC \\`).
    Osc,
}

impl LineAssembler {
    /// Feeds typed text; returns the lines it completed.
    pub fn push(&mut self, text: &str) -> Vec<String> {
        let mut done = Vec::new();
        for c in text.chars() {
            match self.escape {
                Escape::Start => {
                    self.escape = if c == '[' || c == 'O' {
                        Escape::Sequence
                    } else {
                        Escape::None
                    };
                    continue;
                }
                Escape::Sequence | Escape::Osc => {
                    if ('\u{40}'..='\u{7e}').contains(&c) {
                        self.escape = Escape::None;
                    }
                    continue;
                }
                Escape::None => {}
            }
            match c {
                '\u{1b}' => self.escape = Escape::Start,
                '\r' | '\n' => {
                    let line = std::mem::take(&mut self.line);
                    if !line.trim().is_empty() {
                        done.push(line.trim().to_owned());
                    }
                }
                '\u{7f}' | '\u{8}' => {
                    self.line.pop();
                }
                '\u{3}' | '\u{15}' => self.line.clear(),
                c if c.is_control() => {}
                c => {
                    if self.line.len() < MAX_LINE {
                        self.line.push(c);
                    }
                }
            }
        }
        done
    }

    /// Forgets the line being typed (typed while echo was off: a password).
    pub fn forget(&mut self) {
        self.line.clear();
    }
}

/// Drops terminal escape sequences and control characters but newlines
/// and tabs from output, for the history's excerpts.
pub fn plain(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut escape = Escape::None;
    for c in text.chars() {
        match escape {
            Escape::Start => {
                escape = match c {
                    '[' | 'O' => Escape::Sequence,
                    ']' => Escape::Osc,
                    _ => Escape::None,
                };
                continue;
            }
            Escape::Sequence => {
                if ('\u{40}'..='\u{7e}').contains(&c) {
                    escape = Escape::None;
                }
                continue;
            }
            Escape::Osc => {
                match c {
                    '\u{7}' => escape = Escape::None,
                    '\u{1b}' => escape = Escape::Start,
                    _ => {}
                }
                continue;
            }
            Escape::None => {}
        }
        match c {
            '\u{1b}' => escape = Escape::Start,
            '\n' | '\t' => out.push(c),
            c if c.is_control() => {}
            c => out.push(c),
        }
    }
    out
}

/// Text kept up to a size in bytes, oldest dropped first, cut only at
/// character boundaries.
#[derive(Debug, Default)]
pub struct Ring {
    text: String,
    limit: usize,
}

impl Ring {
    pub fn new(limit: usize) -> Ring {
        Ring {
            text: String::new(),
            limit,
        }
    }

    pub fn push(&mut self, s: &str) {
        self.text.push_str(s);
        if self.text.len() > self.limit {
            let mut cut = self.text.len() - self.limit;
            while !self.text.is_char_boundary(cut) {
                cut += 1;
            }
            self.text.drain(..cut);
        }
    }

    pub fn as_str(&self) -> &str {
        &self.text
    }

    pub fn take(&mut self) -> String {
        std::mem::take(&mut self.text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn characters_split_across_reads_arrive_whole() {
        let mut s = Utf8Stream::default();
        let bytes = "héllo €".as_bytes();
        let euro = bytes.len() - 2;
        assert_eq!(s.push(&bytes[..2]), "h");
        assert_eq!(s.push(&bytes[2..euro]), "éllo ");
        assert_eq!(s.push(&bytes[euro..]), "€");
        assert_eq!(s.push(&[0xff, b'a']), "\u{FFFD}a");
        assert_eq!(s.push(&[0xe2, 0x82]), "");
        assert_eq!(s.finish(), "\u{FFFD}");
    }

    #[test]
    fn lines_are_what_the_user_meant() {
        let mut l = LineAssembler::default();
        assert_eq!(l.push("lx\u{7f}s -la"), Vec::<String>::new());
        assert_eq!(l.push("\r"), vec!["ls -la"]);
        assert_eq!(l.push("echo \u{1b}[Ahi\r\n"), vec!["echo hi"]);
        assert_eq!(l.push("rm -rf /\u{3}pwd\r"), vec!["pwd"]);
        assert_eq!(l.push("a\rb\r"), vec!["a", "b"]);
        assert_eq!(l.push("\r\r"), Vec::<String>::new());
        l.push("secret");
        l.forget();
        assert_eq!(l.push("\r"), Vec::<String>::new());
    }

    #[test]
    fn output_excerpts_are_plain_text() {
        assert_eq!(
            plain("\u{1b}[1;32mok\u{1b}[0m\r\n\u{1b}]0;title\u{7}done\n"),
            "ok\ndone\n"
        );
    }

    #[test]
    fn the_ring_keeps_the_newest_text() {
        let mut r = Ring::new(5);
        r.push("abc");
        r.push("déf");
        assert_eq!(r.as_str(), "cdéf");
        r.push("gh");
        assert_eq!(r.as_str(), "éfgh");
        r.push("i");
        assert_eq!(r.as_str(), "fghi", "never half a character");
    }
}
