//! A guest's command line (the topology's `cmdline`, in the boot info) as typed
//! arguments: words separated by whitespace, each `key=value` or a bare `key` (a flag).
//!
//! ```text
//!   role=ping n=1000000 window=64 payload=8 poll=0 heap
//! ```
//!
//! [`Args::get`] parses a value into the type the caller asks for and says which key was
//! wrong and why; a key given twice takes its last value. [`Args::words`] lists every
//! word in order, for guests whose command line is a script (selftest).

use core::fmt;

/// The words of a command line.
#[derive(Debug, Clone, Copy)]
pub struct Args<'a> {
    line: &'a str,
}

/// One word: `key=value`, or a bare `key` with no value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Arg<'a> {
    /// Before the first `=`.
    pub key: &'a str,
    /// After the first `=`; `None` for a bare key.
    pub value: Option<&'a str>,
}

/// A value that does not parse as its key needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ArgError<'a> {
    /// The key.
    pub key: &'a str,
    /// Its value as given (empty for a bare key).
    pub value: &'a str,
    /// What it should have been.
    pub expected: &'static str,
}

impl fmt::Display for ArgError<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "argument `{}={}`: expected {}",
            self.key, self.value, self.expected
        )
    }
}

/// A type an argument's value parses into.
pub trait FromArg<'a>: Sized {
    /// What a valid value looks like, for [`ArgError::expected`].
    const EXPECTED: &'static str;
    /// The value `s` means, if any.
    fn from_arg(s: &'a str) -> Option<Self>;
}

macro_rules! from_arg_unsigned {
    ($($t:ty),*) => {$(
        impl FromArg<'_> for $t {
            const EXPECTED: &'static str = concat!("a decimal or 0x-hexadecimal ", stringify!($t));
            fn from_arg(s: &str) -> Option<$t> {
                match s.strip_prefix("0x") {
                    Some(hex) => <$t>::from_str_radix(hex, 16).ok(),
                    None => s.parse().ok(),
                }
            }
        }
    )*};
}
from_arg_unsigned!(u8, u16, u32, u64, usize);

/// A hexadecimal value, with or without `0x` (`pstate-control=1f`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hex(pub u64);

impl FromArg<'_> for Hex {
    const EXPECTED: &'static str = "a hexadecimal u64";
    fn from_arg(s: &str) -> Option<Hex> {
        let digits = s.strip_prefix("0x").unwrap_or(s);
        u64::from_str_radix(digits, 16).ok().map(Hex)
    }
}

impl FromArg<'_> for i32 {
    const EXPECTED: &'static str = "a decimal i32";
    fn from_arg(s: &str) -> Option<i32> {
        s.parse().ok()
    }
}

impl FromArg<'_> for bool {
    const EXPECTED: &'static str = "true, false, 1 or 0";
    fn from_arg(s: &str) -> Option<bool> {
        match s {
            "true" | "1" => Some(true),
            "false" | "0" => Some(false),
            _ => None,
        }
    }
}

impl<'a> FromArg<'a> for &'a str {
    const EXPECTED: &'static str = "a word";
    fn from_arg(s: &'a str) -> Option<&'a str> {
        Some(s)
    }
}

impl<'a> Arg<'a> {
    /// The value as a `T`; a bare key has the empty value.
    pub fn parse<T: FromArg<'a>>(&self) -> Result<T, ArgError<'a>> {
        let value = self.value.unwrap_or("");
        T::from_arg(value).ok_or(ArgError {
            key: self.key,
            value,
            expected: T::EXPECTED,
        })
    }
}

impl<'a> Args<'a> {
    /// The arguments of `line`.
    pub fn new(line: &'a str) -> Args<'a> {
        Args { line }
    }

    /// Every word, in order.
    pub fn words(&self) -> impl Iterator<Item = Arg<'a>> + 'a {
        self.line
            .split_whitespace()
            .map(|w| match w.split_once('=') {
                Some((key, value)) => Arg {
                    key,
                    value: Some(value),
                },
                None => Arg {
                    key: w,
                    value: None,
                },
            })
    }

    /// The last word with key `key`.
    pub fn find(&self, key: &str) -> Option<Arg<'a>> {
        self.words().filter(|a| a.key == key).last()
    }

    /// `key`'s value as a `T`: `Ok(None)` when the key is absent.
    pub fn get<T: FromArg<'a>>(&self, key: &str) -> Result<Option<T>, ArgError<'a>> {
        self.find(key).map(|a| a.parse()).transpose()
    }

    /// `key`'s value as a `T` (`None` when absent), for an image's `main`: a value
    /// that does not parse is fatal, and the panic (which the VMM reports with the
    /// guest's name) says which argument and why.
    pub fn value<T: FromArg<'a>>(&self, key: &str) -> Option<T> {
        self.get(key).unwrap_or_else(|e| panic!("{e}"))
    }

    /// `key`'s value as a `T`, or `default` when the key is absent.
    pub fn get_or<T: FromArg<'a>>(&self, key: &str, default: T) -> Result<T, ArgError<'a>> {
        Ok(self.get(key)?.unwrap_or(default))
    }

    /// Whether `key` is given (bare, or with any value).
    pub fn has(&self, key: &str) -> bool {
        self.find(key).is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::string::ToString;

    #[test]
    fn values_parse_into_the_type_asked_for() {
        let a = Args::new("  role=ping n=1000000\twindow=0x40 heap verbose=true");
        assert_eq!(a.get::<&str>("role"), Ok(Some("ping")));
        assert_eq!(a.get::<u64>("n"), Ok(Some(1_000_000)));
        assert_eq!(a.get::<u32>("window"), Ok(Some(64)));
        assert_eq!(a.get::<bool>("verbose"), Ok(Some(true)));
        assert_eq!(a.get::<u64>("absent"), Ok(None));
        assert_eq!(a.get_or::<u64>("payload", 8), Ok(8));
        assert!(a.has("heap") && !a.has("hea"));
        let h = Args::new("c=1f d=0x1F e=0xg");
        assert_eq!(h.get::<Hex>("c"), Ok(Some(Hex(0x1f))));
        assert_eq!(h.get::<Hex>("d"), Ok(Some(Hex(0x1f))));
        assert!(h.get::<Hex>("e").is_err());
    }

    #[test]
    fn value_gives_the_value_or_none_and_panics_naming_a_bad_one() {
        let a = Args::new("port=80 n=12x");
        assert_eq!(a.value::<u16>("port"), Some(80));
        assert_eq!(a.value::<u16>("absent"), None);
        extern crate std;
        let e = std::panic::catch_unwind(|| a.value::<u64>("n")).unwrap_err();
        let msg = e
            .downcast_ref::<alloc::string::String>()
            .cloned()
            .unwrap_or_default();
        assert!(msg.contains("`n=12x`"), "{msg}");
    }

    #[test]
    fn a_bad_value_names_its_key_and_what_was_expected() {
        let a = Args::new("n=12x exit=-3 small=300 flag");
        let e = a.get::<u64>("n").unwrap_err();
        assert_eq!((e.key, e.value), ("n", "12x"));
        assert_eq!(
            e.to_string(),
            "argument `n=12x`: expected a decimal or 0x-hexadecimal u64"
        );
        assert_eq!(a.get::<i32>("exit"), Ok(Some(-3)));
        assert!(a.get::<u8>("small").is_err());
        assert_eq!(a.get::<u32>("flag").unwrap_err().value, "");
    }

    #[test]
    fn words_come_in_order_and_a_repeated_key_takes_its_last_value() {
        let a = Args::new("lines=2 exit=1 lines=3 a=b=c");
        let keys: [&str; 4] = core::array::from_fn(|i| a.words().nth(i).unwrap().key);
        assert_eq!(keys, ["lines", "exit", "lines", "a"]);
        assert_eq!(a.get::<u32>("lines"), Ok(Some(3)));
        assert_eq!(a.get::<&str>("a"), Ok(Some("b=c")));
        assert_eq!(Args::new("").words().count(), 0);
    }
}
