//! Guest console output: bytes from a guest are assembled into lines, cleaned of
//! control characters (a guest must not drive the host's terminal) and of invisible
//! format characters (a guest must not make its line read differently from what it
//! holds, with bidi overrides or zero-width characters), and handed to a sink with the
//! guest's name. The default sink prints `[name] line` to stdout.

use std::sync::{Arc, Mutex};
use std::time::Instant;

/// Longest line kept before it is cut and emitted.
pub const MAX_LINE: usize = 4096;

/// One line of guest output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsoleLine {
    /// The guest's name.
    pub guest: String,
    /// The line, without its newline, cleaned.
    pub text: String,
    /// When the VMM received it.
    pub at: Instant,
}

/// Where console lines go.
pub type ConsoleSink = Arc<dyn Fn(ConsoleLine) + Send + Sync>;

/// The default sink: `[name] text` on stdout.
pub fn stdout_sink() -> ConsoleSink {
    Arc::new(|line: ConsoleLine| {
        use std::io::Write;
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "[{}] {}", line.guest, line.text);
        let _ = out.flush();
    })
}

/// Replaces control characters (other than tab) and format characters (see
/// [`is_format`]) with `?`, so that what they hid stays visible as a mark.
pub fn sanitize(s: &str) -> String {
    s.chars()
        .map(|c| {
            if (c.is_control() && c != '\t') || is_format(c) {
                '?'
            } else {
                c
            }
        })
        .collect()
}

/// Unicode's format characters (general category Cf, as of Unicode 15) and its line
/// and paragraph separators (Zl, Zp): invisible, yet they reorder text (bidi embeddings,
/// overrides and isolates, U+202A–U+202E, U+2066–U+2069), hide it (zero-width space,
/// joiners, word joiner, BOM) or break a line where the VMM sees none.
const FORMAT: [(u32, u32); 21] = [
    (0x00ad, 0x00ad),
    (0x0600, 0x0605),
    (0x061c, 0x061c),
    (0x06dd, 0x06dd),
    (0x070f, 0x070f),
    (0x0890, 0x0891),
    (0x08e2, 0x08e2),
    (0x180e, 0x180e),
    (0x200b, 0x200f),
    (0x2028, 0x202e),
    (0x2060, 0x2064),
    (0x2066, 0x206f),
    (0xfeff, 0xfeff),
    (0xfff9, 0xfffb),
    (0x110bd, 0x110bd),
    (0x110cd, 0x110cd),
    (0x13430, 0x1343f),
    (0x1bca0, 0x1bca3),
    (0x1d173, 0x1d17a),
    (0xe0001, 0xe0001),
    (0xe0020, 0xe007f),
];

/// Whether `c` is a format character or a line/paragraph separator ([`FORMAT`]).
pub fn is_format(c: char) -> bool {
    let c = u32::from(c);
    FORMAT.iter().any(|&(lo, hi)| (lo..=hi).contains(&c))
}

/// Line assembly for one guest; shared by its vCPUs.
pub struct GuestConsole {
    partial: Mutex<Vec<u8>>,
    sink: ConsoleSink,
}

impl std::fmt::Debug for GuestConsole {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GuestConsole").finish_non_exhaustive()
    }
}

impl GuestConsole {
    /// A console that emits to `sink`.
    pub fn new(sink: ConsoleSink) -> Self {
        GuestConsole {
            partial: Mutex::new(Vec::new()),
            sink,
        }
    }

    /// Adds bytes from the guest; emits every completed line.
    pub fn write(&self, guest: &str, bytes: &[u8]) {
        let mut lines = Vec::new();
        {
            let mut p = self.partial.lock().unwrap_or_else(|e| e.into_inner());
            for &b in bytes {
                if b == b'\n' {
                    lines.push(std::mem::take(&mut *p));
                } else {
                    p.push(b);
                    if p.len() >= MAX_LINE {
                        lines.push(std::mem::take(&mut *p));
                    }
                }
            }
        }
        for l in lines {
            self.emit(guest, &l);
        }
    }

    /// Emits a pending partial line, if any.
    pub fn flush(&self, guest: &str) {
        let rest = std::mem::take(&mut *self.partial.lock().unwrap_or_else(|e| e.into_inner()));
        if !rest.is_empty() {
            self.emit(guest, &rest);
        }
    }

    fn emit(&self, guest: &str, bytes: &[u8]) {
        let text = sanitize(String::from_utf8_lossy(bytes).trim_end_matches('\r'));
        (self.sink)(ConsoleLine {
            guest: guest.to_string(),
            text,
            at: Instant::now(),
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn capture() -> (GuestConsole, Arc<Mutex<Vec<String>>>) {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let s = seen.clone();
        let sink: ConsoleSink = Arc::new(move |l: ConsoleLine| s.lock().unwrap().push(l.text));
        (GuestConsole::new(sink), seen)
    }

    #[test]
    fn lines_are_assembled_across_writes() {
        let (c, seen) = capture();
        c.write("g", b"hel");
        c.write("g", b"lo\nwor");
        assert_eq!(*seen.lock().unwrap(), vec!["hello"]);
        c.flush("g");
        assert_eq!(*seen.lock().unwrap(), vec!["hello", "wor"]);
    }

    #[test]
    fn control_characters_are_neutralised() {
        let (c, seen) = capture();
        c.write("g", b"\x1b[2Jevil\ttab\r\n");
        assert_eq!(*seen.lock().unwrap(), vec!["?[2Jevil\ttab"]);
    }

    #[test]
    fn endless_lines_are_cut_at_max_line_and_the_tail_stays_pending() {
        let (c, seen) = capture();
        c.write("g", &vec![b'x'; MAX_LINE * 2 + 5]);
        let full = "x".repeat(MAX_LINE);
        assert_eq!(*seen.lock().unwrap(), vec![full.clone(), full.clone()]);
        c.write("g", b"y\n");
        assert_eq!(
            *seen.lock().unwrap(),
            vec![full.clone(), full, "xxxxxy".into()]
        );
    }

    #[test]
    fn bidi_overrides_and_isolates_are_neutralised() {
        let (c, seen) = capture();
        c.write(
            "g",
            "ok \u{202e}txt.exe\u{202c} \u{2067}x\u{2069}\n".as_bytes(),
        );
        assert_eq!(*seen.lock().unwrap(), vec!["ok ?txt.exe? ?x?"]);
    }

    #[test]
    fn zero_width_characters_and_separators_are_neutralised() {
        let (c, seen) = capture();
        c.write(
            "g",
            "a\u{200b}b\u{200d}c\u{2060}d\u{feff}e\u{2028}f\u{e0041}g\n".as_bytes(),
        );
        assert_eq!(*seen.lock().unwrap(), vec!["a?b?c?d?e?f?g"]);
    }

    #[test]
    fn visible_text_beyond_ascii_is_kept() {
        assert_eq!(sanitize("grüße 東京 π≈3"), "grüße 東京 π≈3");
        assert!(!is_format('\u{200a}'), "hair space is visible spacing, Zs");
        assert!(
            is_format('\u{13439}'),
            "Unicode 15 Egyptian format controls"
        );
    }
}
