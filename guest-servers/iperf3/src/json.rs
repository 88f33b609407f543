//! The JSON iperf3 exchanges: a parser that refuses what is not JSON, too deep or too
//! long (never panics, bounded by its input), and a writer of the same values.
//!
//! iperf3 writes its parameters and results with `cJSON_PrintUnformatted`; numbers are
//! integers or doubles, so [`Value`] keeps integers exact ([`Value::Int`]) and the rest
//! as `f64`.

use alloc::string::String;
use alloc::vec::Vec;
use core::fmt::{self, Write};

/// Nesting deeper than this is refused (iperf3's own messages nest three levels).
pub const MAX_DEPTH: usize = 16;

/// A JSON value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// `null`.
    Null,
    /// `true` or `false`.
    Bool(bool),
    /// A number without fraction or exponent that fits an `i64`.
    Int(i64),
    /// Any other number.
    Float(f64),
    /// A string.
    Str(String),
    /// An array.
    Array(Vec<Value>),
    /// An object, its members in order (a repeated key: [`Value::get`] finds the first).
    Object(Vec<(String, Value)>),
}

/// Why a text is not accepted as JSON.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JsonError {
    /// The byte offset where it went wrong.
    pub at: usize,
    /// What was wrong.
    pub what: &'static str,
}

impl fmt::Display for JsonError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "bad JSON at byte {}: {}", self.at, self.what)
    }
}

impl Value {
    /// Member `key` of an object.
    pub fn get(&self, key: &str) -> Option<&Value> {
        match self {
            Value::Object(members) => members.iter().find(|(k, _)| k == key).map(|(_, v)| v),
            _ => None,
        }
    }

    /// The value as an integer: an [`Value::Int`], a finite [`Value::Float`] truncated
    /// towards zero (as cJSON's `valueint`, saturating), or a boolean as 0/1.
    pub fn as_i64(&self) -> Option<i64> {
        match *self {
            Value::Int(i) => Some(i),
            // `as` saturates (and the check excludes NaN and infinities).
            #[allow(clippy::cast_possible_truncation)]
            Value::Float(f) if f.is_finite() => Some(f as i64),
            Value::Bool(b) => Some(i64::from(b)),
            _ => None,
        }
    }

    /// The value as a non-negative integer.
    pub fn as_u64(&self) -> Option<u64> {
        self.as_i64().and_then(|i| u64::try_from(i).ok())
    }

    /// The value as a float.
    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            // Exact up to 2^53; beyond, the nearest double, as cJSON.
            #[allow(clippy::cast_precision_loss)]
            Value::Int(i) => Some(i as f64),
            Value::Float(f) => Some(f),
            _ => None,
        }
    }

    /// The value as a boolean; iperf3 also sends flags as numbers (`"sender_has_retransmits":1`).
    pub fn as_bool(&self) -> Option<bool> {
        match *self {
            Value::Bool(b) => Some(b),
            Value::Int(i) => Some(i != 0),
            _ => None,
        }
    }

    /// The value as a string.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::Str(s) => Some(s),
            _ => None,
        }
    }

    /// The value as an array.
    pub fn as_array(&self) -> Option<&[Value]> {
        match self {
            Value::Array(a) => Some(a),
            _ => None,
        }
    }
}

/// A small builder of objects: `obj().int("id", 1).float("jitter", 0.0).build()`.
#[derive(Debug, Default)]
pub struct ObjectBuilder(Vec<(String, Value)>);

/// Start an object.
pub fn obj() -> ObjectBuilder {
    ObjectBuilder::default()
}

impl ObjectBuilder {
    /// Add member `key`.
    pub fn with(mut self, key: &str, v: Value) -> ObjectBuilder {
        self.0.push((String::from(key), v));
        self
    }
    /// Add an integer member.
    pub fn int(self, key: &str, v: i64) -> ObjectBuilder {
        self.with(key, Value::Int(v))
    }
    /// Add an unsigned integer member (saturating at `i64::MAX`).
    pub fn uint(self, key: &str, v: u64) -> ObjectBuilder {
        self.with(key, Value::Int(i64::try_from(v).unwrap_or(i64::MAX)))
    }
    /// Add a float member.
    pub fn float(self, key: &str, v: f64) -> ObjectBuilder {
        self.with(key, Value::Float(v))
    }
    /// Add a boolean member.
    pub fn bool(self, key: &str, v: bool) -> ObjectBuilder {
        self.with(key, Value::Bool(v))
    }
    /// Add a string member.
    pub fn str(self, key: &str, v: &str) -> ObjectBuilder {
        self.with(key, Value::Str(String::from(v)))
    }
    /// The object.
    pub fn build(self) -> Value {
        Value::Object(self.0)
    }
}

impl fmt::Display for Value {
    /// Unformatted JSON, as `cJSON_PrintUnformatted`. Non-finite floats (which JSON
    /// cannot say) are written as 0.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Value::Null => f.write_str("null"),
            Value::Bool(b) => f.write_str(if *b { "true" } else { "false" }),
            Value::Int(i) => write!(f, "{i}"),
            Value::Float(x) if x.is_finite() => write!(f, "{x}"),
            Value::Float(_) => f.write_str("0"),
            Value::Str(s) => write_str(f, s),
            Value::Array(items) => {
                f.write_char('[')?;
                for (i, v) in items.iter().enumerate() {
                    if i > 0 {
                        f.write_char(',')?;
                    }
                    write!(f, "{v}")?;
                }
                f.write_char(']')
            }
            Value::Object(members) => {
                f.write_char('{')?;
                for (i, (k, v)) in members.iter().enumerate() {
                    if i > 0 {
                        f.write_char(',')?;
                    }
                    write_str(f, k)?;
                    write!(f, ":{v}")?;
                }
                f.write_char('}')
            }
        }
    }
}

fn write_str(f: &mut fmt::Formatter<'_>, s: &str) -> fmt::Result {
    f.write_char('"')?;
    for c in s.chars() {
        match c {
            '"' => f.write_str("\\\"")?,
            '\\' => f.write_str("\\\\")?,
            '\n' => f.write_str("\\n")?,
            '\r' => f.write_str("\\r")?,
            '\t' => f.write_str("\\t")?,
            c if u32::from(c) < 0x20 => write!(f, "\\u{:04x}", u32::from(c))?,
            c => f.write_char(c)?,
        }
    }
    f.write_char('"')
}

/// Parse `text`, which must be one JSON value (whitespace around it allowed). The work
/// and memory are bounded by the text's length; nesting by [`MAX_DEPTH`].
pub fn parse(text: &[u8]) -> Result<Value, JsonError> {
    let mut p = Parser { s: text, i: 0 };
    let v = p.value(0)?;
    p.ws();
    if p.i != text.len() {
        return Err(p.err("trailing characters"));
    }
    Ok(v)
}

struct Parser<'a> {
    s: &'a [u8],
    i: usize,
}

impl Parser<'_> {
    fn err(&self, what: &'static str) -> JsonError {
        JsonError { at: self.i, what }
    }

    fn peek(&self) -> Option<u8> {
        self.s.get(self.i).copied()
    }

    fn ws(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t' | b'\n' | b'\r')) {
            self.i += 1;
        }
    }

    fn literal(&mut self, word: &'static [u8], v: Value) -> Result<Value, JsonError> {
        if self.s.get(self.i..self.i + word.len()) == Some(word) {
            self.i += word.len();
            Ok(v)
        } else {
            Err(self.err("unknown literal"))
        }
    }

    fn value(&mut self, depth: usize) -> Result<Value, JsonError> {
        if depth >= MAX_DEPTH {
            return Err(self.err("nested too deep"));
        }
        self.ws();
        match self.peek() {
            None => Err(self.err("unexpected end")),
            Some(b'n') => self.literal(b"null", Value::Null),
            Some(b't') => self.literal(b"true", Value::Bool(true)),
            Some(b'f') => self.literal(b"false", Value::Bool(false)),
            Some(b'"') => self.string().map(Value::Str),
            Some(b'-' | b'0'..=b'9') => self.number(),
            Some(b'[') => {
                self.i += 1;
                let mut items = Vec::new();
                self.ws();
                if self.peek() == Some(b']') {
                    self.i += 1;
                    return Ok(Value::Array(items));
                }
                loop {
                    items.push(self.value(depth + 1)?);
                    self.ws();
                    match self.peek() {
                        Some(b',') => self.i += 1,
                        Some(b']') => {
                            self.i += 1;
                            return Ok(Value::Array(items));
                        }
                        _ => return Err(self.err("expected , or ]")),
                    }
                }
            }
            Some(b'{') => {
                self.i += 1;
                let mut members = Vec::new();
                self.ws();
                if self.peek() == Some(b'}') {
                    self.i += 1;
                    return Ok(Value::Object(members));
                }
                loop {
                    self.ws();
                    if self.peek() != Some(b'"') {
                        return Err(self.err("expected a key"));
                    }
                    let k = self.string()?;
                    self.ws();
                    if self.peek() != Some(b':') {
                        return Err(self.err("expected :"));
                    }
                    self.i += 1;
                    let v = self.value(depth + 1)?;
                    members.push((k, v));
                    self.ws();
                    match self.peek() {
                        Some(b',') => self.i += 1,
                        Some(b'}') => {
                            self.i += 1;
                            return Ok(Value::Object(members));
                        }
                        _ => return Err(self.err("expected , or }")),
                    }
                }
            }
            Some(_) => Err(self.err("unexpected character")),
        }
    }

    fn digits(&mut self) -> usize {
        let start = self.i;
        while matches!(self.peek(), Some(b'0'..=b'9')) {
            self.i += 1;
        }
        self.i - start
    }

    fn number(&mut self) -> Result<Value, JsonError> {
        let start = self.i;
        if self.peek() == Some(b'-') {
            self.i += 1;
        }
        let int_start = self.i;
        let n = self.digits();
        if n == 0 {
            return Err(self.err("expected digits"));
        }
        if n > 1 && self.s.get(int_start) == Some(&b'0') {
            return Err(self.err("leading zero"));
        }
        let mut integral = true;
        if self.peek() == Some(b'.') {
            self.i += 1;
            integral = false;
            if self.digits() == 0 {
                return Err(self.err("expected fraction digits"));
            }
        }
        if matches!(self.peek(), Some(b'e' | b'E')) {
            self.i += 1;
            integral = false;
            if matches!(self.peek(), Some(b'+' | b'-')) {
                self.i += 1;
            }
            if self.digits() == 0 {
                return Err(self.err("expected exponent digits"));
            }
        }
        // Only ASCII digits, signs, '.', 'e' were consumed.
        let text = core::str::from_utf8(&self.s[start..self.i]).map_err(|_| self.err("number"))?;
        if integral {
            if let Ok(i) = text.parse::<i64>() {
                return Ok(Value::Int(i));
            }
        }
        text.parse::<f64>()
            .map(Value::Float)
            .map_err(|_| self.err("bad number"))
    }

    fn hex4(&mut self) -> Result<u32, JsonError> {
        let digits = self
            .s
            .get(self.i..self.i + 4)
            .ok_or(self.err("short \\u escape"))?;
        let mut v = 0u32;
        for &d in digits {
            let x = char::from(d)
                .to_digit(16)
                .ok_or(self.err("bad \\u escape"))?;
            v = v * 16 + x;
        }
        self.i += 4;
        Ok(v)
    }

    fn string(&mut self) -> Result<String, JsonError> {
        self.i += 1; // the opening quote
        let mut out = String::new();
        loop {
            // Copy a run of plain bytes at once, checking it is UTF-8.
            let run = self.i;
            while matches!(self.peek(), Some(c) if c != b'"' && c != b'\\' && c >= 0x20) {
                self.i += 1;
            }
            let plain = core::str::from_utf8(&self.s[run..self.i]).map_err(|e| JsonError {
                at: run + e.valid_up_to(),
                what: "not UTF-8",
            })?;
            out.push_str(plain);
            match self.peek() {
                None => return Err(self.err("unterminated string")),
                Some(b'"') => {
                    self.i += 1;
                    return Ok(out);
                }
                Some(b'\\') => {
                    self.i += 1;
                    let c = self.peek().ok_or(self.err("unterminated escape"))?;
                    self.i += 1;
                    let ch = match c {
                        b'"' => '"',
                        b'\\' => '\\',
                        b'/' => '/',
                        b'b' => '\u{8}',
                        b'f' => '\u{c}',
                        b'n' => '\n',
                        b'r' => '\r',
                        b't' => '\t',
                        b'u' => self.unicode_escape()?,
                        _ => return Err(self.err("unknown escape")),
                    };
                    out.push(ch);
                }
                Some(_) => return Err(self.err("control character in string")),
            }
        }
    }

    /// After `\u`: one code point, a surrogate pair taking two escapes.
    fn unicode_escape(&mut self) -> Result<char, JsonError> {
        let hi = self.hex4()?;
        let cp = if (0xd800..0xdc00).contains(&hi) {
            if self.s.get(self.i..self.i + 2) != Some(b"\\u") {
                return Err(self.err("lone surrogate"));
            }
            self.i += 2;
            let lo = self.hex4()?;
            if !(0xdc00..0xe000).contains(&lo) {
                return Err(self.err("bad low surrogate"));
            }
            0x10000 + ((hi - 0xd800) << 10) + (lo - 0xdc00)
        } else {
            hi
        };
        char::from_u32(cp).ok_or(self.err("lone surrogate"))
    }
}

/// `v` as JSON text.
pub fn to_string(v: &Value) -> String {
    let mut s = String::new();
    // Writing to a String cannot fail.
    let _ = write!(s, "{v}");
    s
}

/// `depth` nested empty arrays, for the hostile-input tests.
#[cfg(test)]
pub(crate) fn nested(depth: usize) -> String {
    let mut s = String::new();
    for _ in 0..depth {
        s.push('[');
    }
    for _ in 0..depth {
        s.push(']');
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec;

    #[test]
    fn the_stock_client_parameters_parse() {
        let t = br#"{"tcp":true,"omit":0,"time":10,"num":0,"blockcount":0,"parallel":1,"len":131072,"pacing_timer":1000,"client_version":"3.12"}"#;
        let v = parse(t).unwrap();
        assert_eq!(v.get("tcp"), Some(&Value::Bool(true)));
        assert_eq!(v.get("len").and_then(Value::as_u64), Some(131_072));
        assert_eq!(
            v.get("client_version").and_then(Value::as_str),
            Some("3.12")
        );
        assert_eq!(v.get("reverse"), None);
        assert_eq!(to_string(&v).as_bytes(), &t[..]);
    }

    #[test]
    fn numbers_keep_integers_exact_and_read_floats() {
        let v =
            parse(b"[0,-7,9007199254740993,1.5,2e3,-0.25E-1,1e400,99999999999999999999]").unwrap();
        let a = v.as_array().unwrap();
        assert_eq!(a[0], Value::Int(0));
        assert_eq!(a[1], Value::Int(-7));
        assert_eq!(a[2], Value::Int(9_007_199_254_740_993));
        assert_eq!(a[3], Value::Float(1.5));
        assert_eq!(a[4].as_i64(), Some(2000));
        assert_eq!(a[5], Value::Float(-0.025));
        assert_eq!(a[6].as_i64(), None, "infinity is no integer");
        assert_eq!(a[7].as_u64(), Some(i64::MAX as u64), "saturates");
    }

    #[test]
    fn strings_unescape_and_escape_back() {
        let v = parse(br#""a\"b\\c\/\n\u0001\u00e9\ud83d\ude00""#).unwrap();
        assert_eq!(v.as_str(), Some("a\"b\\c/\n\u{1}\u{e9}\u{1f600}"));
        assert_eq!(to_string(&v), "\"a\\\"b\\\\c/\\n\\u0001\u{e9}\u{1f600}\"");
        assert_eq!(parse(to_string(&v).as_bytes()).unwrap(), v);
    }

    #[test]
    fn what_is_not_json_is_refused() {
        for bad in [
            &b""[..],
            b"{",
            b"[1,]",
            b"{\"a\" 1}",
            b"{\"a\":1,}",
            b"01",
            b"1.",
            b"-",
            b"1e",
            b"tru",
            b"nul",
            b"\"abc",
            b"\"\\x\"",
            b"\"\\ud800\"",
            b"\"\\udc00\"",
            b"\"\\u12\"",
            b"\"a\nb\"",
            b"\"\xff\"",
            b"{1:2}",
            b"[] []",
            b"NaN",
        ] {
            assert!(
                parse(bad).is_err(),
                "{:?} accepted",
                core::str::from_utf8(bad)
            );
        }
    }

    #[test]
    fn nesting_is_bounded() {
        assert!(parse(nested(MAX_DEPTH).as_bytes()).is_ok());
        let e = parse(nested(MAX_DEPTH + 1).as_bytes()).unwrap_err();
        assert_eq!(e.what, "nested too deep");
        // Deep enough to overflow a naive recursive parser's stack.
        assert!(parse(nested(100_000).as_bytes()).is_err());
    }

    #[test]
    fn the_writer_writes_what_the_parser_reads() {
        let v = obj()
            .int("id", 1)
            .uint("bytes", u64::MAX)
            .float("jitter", 0.0)
            .float("cpu", 12.5)
            .float("nan", f64::NAN)
            .bool("b", false)
            .str("s", "x")
            .with("a", Value::Array(vec![Value::Null, Value::Int(-1)]))
            .build();
        let text = to_string(&v);
        assert_eq!(
            text,
            r#"{"id":1,"bytes":9223372036854775807,"jitter":0,"cpu":12.5,"nan":0,"b":false,"s":"x","a":[null,-1]}"#
        );
        let back = parse(text.as_bytes()).unwrap();
        assert_eq!(back.get("cpu"), Some(&Value::Float(12.5)));
        assert_eq!(back.get("bytes").and_then(Value::as_i64), Some(i64::MAX));
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..256)) {
            let _ = parse(&bytes);
        }

        #[test]
        fn mutated_json_never_panics(pos in 0usize..120, byte in proptest::num::u8::ANY) {
            let mut t = br#"{"cpu_util_total":1.5,"streams":[{"id":1,"bytes":123,"s":"\u00e9x"}],"x":[true,null]}"#.to_vec();
            let p = pos % t.len();
            t[p] = byte;
            let _ = parse(&t);
            t.truncate(p);
            let _ = parse(&t);
        }
    }
}
