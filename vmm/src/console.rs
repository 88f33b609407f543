//! Guest console output: bytes from a guest are assembled into lines, cleaned of
//! control characters (a guest must not drive the host's terminal), and handed to a
//! sink with the guest's name. The default sink prints `[name] line` to stdout.

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

/// Replaces control characters (other than tab) with `?`.
pub fn sanitize(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_control() && c != '\t' { '?' } else { c })
        .collect()
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
    fn endless_lines_are_cut() {
        let (c, seen) = capture();
        c.write("g", &vec![b'x'; MAX_LINE * 2 + 5]);
        assert_eq!(seen.lock().unwrap().len(), 2);
    }
}
