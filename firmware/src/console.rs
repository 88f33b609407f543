//! Console output to the VMM.
//!
//! Text is gathered in the console page and handed over a line at a time with one
//! `OUT` to the console port (one VM exit a line); the VMM prefixes each line with the
//! guest's name.

use compart_abi::{ports, CONSOLE_BUF_GPA, CONSOLE_BUF_SIZE};
use core::fmt;
use spin::Mutex;

struct Console {
    len: usize,
}

static CONSOLE: Mutex<Console> = Mutex::new(Console { len: 0 });

impl Console {
    fn buf(&mut self) -> &mut [u8] {
        // SAFETY: the console page is guest RAM reserved for this purpose by the ABI,
        // identity-mapped; only this module (under the CONSOLE lock, or the panic
        // path that has stopped everything else) writes it.
        unsafe {
            core::slice::from_raw_parts_mut(CONSOLE_BUF_GPA as *mut u8, CONSOLE_BUF_SIZE as usize)
        }
    }

    fn push(&mut self, bytes: &[u8]) {
        for &b in bytes {
            if self.len == CONSOLE_BUF_SIZE as usize {
                self.flush();
            }
            let len = self.len;
            self.buf()[len] = b;
            self.len += 1;
            if b == b'\n' {
                self.flush();
            }
        }
    }

    fn flush(&mut self) {
        if self.len > 0 {
            // SAFETY: CONSOLE is a ring-3 port; its value is the byte count.
            unsafe { crate::outl(ports::CONSOLE, self.len as u32) };
            self.len = 0;
        }
    }
}

impl fmt::Write for Console {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        self.push(s.as_bytes());
        Ok(())
    }
}

#[doc(hidden)]
pub fn _print(args: fmt::Arguments) {
    use fmt::Write;
    let _ = CONSOLE.lock().write_fmt(args);
}

/// Hands over whatever is buffered, even without a newline.
pub fn flush() {
    CONSOLE.lock().flush();
}

/// Writes bytes without taking the lock; for paths where nothing else can run.
pub(crate) fn write_raw(bytes: &[u8]) {
    let mut c = Console { len: 0 };
    c.push(bytes);
    c.flush();
}

/// Formats the panic report into the console page, bypassing the lock (the panicking
/// vCPU may hold it), and returns its length.
pub(crate) fn write_panic(args: fmt::Arguments) -> usize {
    use fmt::Write;
    struct Truncating<'a> {
        buf: &'a mut [u8],
        len: usize,
    }
    impl fmt::Write for Truncating<'_> {
        fn write_str(&mut self, s: &str) -> fmt::Result {
            let n = s.len().min(self.buf.len() - self.len);
            self.buf[self.len..self.len + n].copy_from_slice(&s.as_bytes()[..n]);
            self.len += n;
            Ok(())
        }
    }
    let mut c = Console { len: 0 };
    let mut t = Truncating {
        buf: c.buf(),
        len: 0,
    };
    let _ = t.write_fmt(args);
    t.len
}

/// Prints to the VMM console.
#[macro_export]
macro_rules! print {
    ($($arg:tt)*) => { $crate::console::_print(format_args!($($arg)*)) };
}

/// Prints a line to the VMM console.
#[macro_export]
macro_rules! println {
    () => { $crate::print!("\n") };
    ($($arg:tt)*) => { $crate::console::_print(format_args!("{}\n", format_args!($($arg)*))) };
}
