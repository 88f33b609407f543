//! The HTTP/1.1 request head (RFC 9112 §2–§5), parsed from the bytes a connection has
//! received so far, bounded and without panicking on any input.
//!
//! A head is the request line, header lines, and an empty line, each ended by CRLF. The
//! parser looks for the empty line within [`MAX_HEAD`] bytes: until it is there the head
//! is [`Parsed::Incomplete`]; past the limit it is refused — with 414 when the request
//! line alone does not fit in [`MAX_REQUEST_LINE`], else 431. What it keeps of a head are
//! borrowed slices: the method, the target, the version, and the few headers the server
//! acts on (`Connection`, `Host`, `Content-Length`, `Transfer-Encoding`); every other
//! header is checked for form and skipped.

use crate::Status;

/// The longest request line (method, target, version) accepted; longer is 414.
pub const MAX_REQUEST_LINE: usize = 2048;
/// The longest head (request line and headers, with the empty line) accepted; longer is
/// 431.
pub const MAX_HEAD: usize = 8192;
/// The most header lines a head may have; more is 431.
pub const MAX_HEADERS: usize = 64;

/// The methods the server knows; the others are answered 405.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    /// GET.
    Get,
    /// HEAD: GET's head without the body.
    Head,
    /// Any other well-formed method (a token).
    Other,
}

/// A parsed request head; slices of the received bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request<'a> {
    /// The method.
    pub method: Method,
    /// The request target as sent (origin form `/path?query`, or absolute form).
    pub target: &'a [u8],
    /// The minor version of HTTP/1.x: 0 or 1.
    pub minor: u8,
    /// The connection should stay open after the response (HTTP/1.1 without
    /// `Connection: close`, or HTTP/1.0 with `Connection: keep-alive`).
    pub keep_alive: bool,
    /// The request announces a body (a non-zero `Content-Length`, or any
    /// `Transfer-Encoding`): the server does not read bodies, so it answers and closes.
    pub has_body: bool,
}

/// The outcome of parsing what has arrived.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Parsed<'a> {
    /// No complete head yet, and within the limits: read more.
    Incomplete,
    /// A head of `len` bytes (with its empty line); the bytes after it are the next
    /// request's.
    Complete {
        /// The request.
        request: Request<'a>,
        /// Bytes of the head.
        len: usize,
    },
    /// Not a request the server can read: answer with this status and close.
    Invalid(Status),
}

fn find_crlf(buf: &[u8]) -> Option<usize> {
    buf.windows(2).position(|w| w == b"\r\n")
}

fn find_head_end(buf: &[u8]) -> Option<usize> {
    buf.windows(4).position(|w| w == b"\r\n\r\n").map(|i| i + 4)
}

/// `tchar` of RFC 9110 §5.6.2: the characters of methods and header names.
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

fn is_token(s: &[u8]) -> bool {
    !s.is_empty() && s.iter().all(|&b| is_tchar(b))
}

/// Visible ASCII (no controls, no space): the characters of a request target.
fn is_target(s: &[u8]) -> bool {
    !s.is_empty() && s.iter().all(|&b| (0x21..0x7f).contains(&b))
}

/// A field value: visible characters, spaces and tabs; no controls (so no bare CR or
/// LF), obs-text (0x80–0xff) allowed.
fn is_field_value(s: &[u8]) -> bool {
    s.iter()
        .all(|&b| b == b'\t' || b == b' ' || (0x21..0x7f).contains(&b) || b >= 0x80)
}

fn trim(mut s: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = s {
        s = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = s {
        s = rest;
    }
    s
}

/// A decimal number of at most 19 digits (fits u64); `None` otherwise.
pub fn parse_decimal(s: &[u8]) -> Option<u64> {
    if s.is_empty() || s.len() > 19 || !s.iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some(s.iter().fold(0u64, |n, &d| n * 10 + u64::from(d - b'0')))
}

/// Whether a comma-separated list value (`Connection: keep-alive, Upgrade`) has `word`,
/// compared without case.
fn list_has(value: &[u8], word: &[u8]) -> bool {
    value
        .split(|&b| b == b',')
        .any(|item| trim(item).eq_ignore_ascii_case(word))
}

/// Parse the head at the start of `buf`, the bytes received so far.
pub fn parse(buf: &[u8]) -> Parsed<'_> {
    // Leading empty lines before a request line are to be ignored (RFC 9112 §2.2); at
    // most a few, so that a peer sending only CRLFs is bounded by the head limit below.
    let mut start = 0;
    while buf[start..].starts_with(b"\r\n") {
        start += 2;
    }
    let Some(end) = find_head_end(&buf[start..]).map(|e| e + start) else {
        let line_len = find_crlf(&buf[start..]).unwrap_or(buf.len() - start);
        if line_len > MAX_REQUEST_LINE {
            return Parsed::Invalid(Status::UriTooLong);
        }
        if buf.len() >= MAX_HEAD {
            return Parsed::Invalid(Status::HeadersTooLarge);
        }
        return Parsed::Incomplete;
    };
    if end > MAX_HEAD {
        let line_len = find_crlf(&buf[start..]).unwrap_or(0);
        return Parsed::Invalid(if line_len > MAX_REQUEST_LINE {
            Status::UriTooLong
        } else {
            Status::HeadersTooLarge
        });
    }
    // The head without its final CRLF CRLF, then split into lines.
    let head = &buf[start..end - 4];
    let mut lines = head.split(|&b| b == b'\n').map(|l| {
        // Every line but the last ends in "\r\n" (the last's CRLF was cut off above).
        l.strip_suffix(b"\r").unwrap_or(l)
    });
    // A bare LF or CR inside a line shows up as an unstripped CR or an extra split;
    // check every line for controls below, and that each line but the last had its CR.
    let segments = head.split(|&b| b == b'\n').count();
    let crs = head.windows(2).filter(|w| w == b"\r\n").count();
    if crs + 1 != segments {
        return Parsed::Invalid(Status::BadRequest);
    }
    let Some(line) = lines.next() else {
        return Parsed::Invalid(Status::BadRequest);
    };
    if line.len() > MAX_REQUEST_LINE {
        return Parsed::Invalid(Status::UriTooLong);
    }
    let mut parts = line.split(|&b| b == b' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Parsed::Invalid(Status::BadRequest);
    };
    if !is_token(method) || !is_target(target) {
        return Parsed::Invalid(Status::BadRequest);
    }
    let minor = match version {
        b"HTTP/1.1" => 1,
        b"HTTP/1.0" => 0,
        v if v.starts_with(b"HTTP/") && v.len() == 8 => {
            return Parsed::Invalid(Status::VersionNotSupported)
        }
        _ => return Parsed::Invalid(Status::BadRequest),
    };
    let method = match method {
        b"GET" => Method::Get,
        b"HEAD" => Method::Head,
        _ => Method::Other,
    };
    let mut close = false;
    let mut keep_alive_token = false;
    let mut hosts = 0u32;
    let mut has_body = false;
    let mut content_length: Option<u64> = None;
    for (n, l) in lines.enumerate() {
        if n >= MAX_HEADERS {
            return Parsed::Invalid(Status::HeadersTooLarge);
        }
        // No whitespace before the colon, none at the start (obsolete line folding).
        let Some(colon) = l.iter().position(|&b| b == b':') else {
            return Parsed::Invalid(Status::BadRequest);
        };
        let (name, value) = (&l[..colon], &l[colon + 1..]);
        if !is_token(name) || !is_field_value(value) {
            return Parsed::Invalid(Status::BadRequest);
        }
        let value = trim(value);
        if name.eq_ignore_ascii_case(b"connection") {
            close |= list_has(value, b"close");
            keep_alive_token |= list_has(value, b"keep-alive");
        } else if name.eq_ignore_ascii_case(b"host") {
            hosts += 1;
        } else if name.eq_ignore_ascii_case(b"content-length") {
            let Some(len) = parse_decimal(value) else {
                return Parsed::Invalid(Status::BadRequest);
            };
            // Several Content-Length fields must agree (RFC 9112 §6.3).
            if content_length.is_some_and(|l| l != len) {
                return Parsed::Invalid(Status::BadRequest);
            }
            content_length = Some(len);
            has_body |= len > 0;
        } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
            has_body = true;
        }
    }
    // HTTP/1.1 requests carry exactly one Host (RFC 9112 §3.2).
    if (minor == 1 && hosts != 1) || hosts > 1 {
        return Parsed::Invalid(Status::BadRequest);
    }
    let keep_alive = !has_body && !close && (minor == 1 || keep_alive_token);
    Parsed::Complete {
        request: Request {
            method,
            target,
            minor,
            keep_alive,
            has_body,
        },
        len: end,
    }
}
