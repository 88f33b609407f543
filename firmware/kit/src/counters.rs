//! Per-reason counters of a server: a struct of `u64` fields declared once with
//! [`counters!`](crate::counters), which the tests read field by field and the image
//! prints as `name=value` for every counter that is not zero.

/// Declares a counters struct: `counters! { /// doc  pub struct Name { /// doc  field, … } }`.
/// Every field is a `u64` with its doc comment; the struct gets `each` (every name and
/// value, in declaration order) and `write_nonzero` (the non-zero ones as `name=value`
/// separated by spaces, for a `Display`).
#[macro_export]
macro_rules! counters {
    ($(#[$meta:meta])* pub struct $ty:ident { $($(#[doc = $doc:literal])+ $name:ident,)* }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Default, PartialEq, Eq)]
        pub struct $ty {
            $($(#[doc = $doc])+ pub $name: u64,)*
        }

        impl $ty {
            /// Calls `f` with every counter's name and value, in declaration order.
            pub fn each(&self, mut f: impl FnMut(&'static str, u64)) {
                $(f(stringify!($name), self.$name);)*
            }

            /// Writes the counters that are not zero as `name=value`, separated by
            /// spaces; whether there was any.
            pub fn write_nonzero(
                &self,
                f: &mut core::fmt::Formatter<'_>,
            ) -> Result<bool, core::fmt::Error> {
                let mut any = false;
                let mut r = Ok(());
                self.each(|name, v| {
                    if v != 0 && r.is_ok() {
                        r = write!(f, "{}{name}={v}", if any { " " } else { "" });
                        any = true;
                    }
                });
                r.map(|()| any)
            }
        }
    };
}

#[cfg(test)]
mod tests {
    extern crate std;
    use std::string::ToString;

    crate::counters! {
        /// Two counters.
        pub struct Two {
            /// The first.
            a,
            /// The second.
            b,
        }
    }

    impl core::fmt::Display for Two {
        fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
            self.write_nonzero(f).map(drop)
        }
    }

    #[test]
    fn only_counters_that_are_not_zero_are_written_in_declaration_order() {
        assert_eq!(Two::default().to_string(), "");
        assert_eq!(Two { a: 0, b: 3 }.to_string(), "b=3");
        assert_eq!(Two { a: 1, b: 2 }.to_string(), "a=1 b=2");
        let mut names = std::vec::Vec::new();
        Two::default().each(|n, _| names.push(n));
        assert_eq!(names, ["a", "b"]);
    }
}
