//! What can be wrong with the tables a guest finds.

use core::fmt;

/// A 4-character ACPI signature or name segment, printed as text.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Sig(pub [u8; 4]);

impl fmt::Debug for Sig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl fmt::Display for Sig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for &b in &self.0 {
            let c = if b.is_ascii_graphic() || b == b' ' {
                b as char
            } else {
                '?'
            };
            write!(f, "{c}")?;
        }
        Ok(())
    }
}

/// Why the AML of the DSDT could not be read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AmlError {
    /// The byte stream ends inside an object.
    Truncated,
    /// A PkgLength is malformed or runs past its parent.
    BadPkgLength,
    /// An opcode outside the subset this reader knows.
    UnsupportedOpcode(u8),
    /// A name string is malformed.
    BadName,
    /// A string is not NUL-terminated ASCII.
    BadString,
    /// Scopes and devices nest deeper than the reader follows.
    TooDeep,
}

/// Why tables could not be read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Error {
    /// A table or pointer lies outside the memory given to the reader.
    OutOfBounds {
        /// Guest-physical address of the range.
        gpa: u64,
        /// Its length.
        len: usize,
    },
    /// No `"RSD PTR "` at the RSDP address.
    BadRsdpSignature,
    /// An RSDP older than ACPI 2.0 has no XSDT.
    UnsupportedRsdpRevision(u8),
    /// A table is not the one its pointer promises.
    BadSignature {
        /// The signature expected.
        expected: Sig,
        /// The signature found.
        found: Sig,
    },
    /// A table's length field is impossible.
    BadLength {
        /// The table.
        table: Sig,
        /// Its length field.
        length: u32,
    },
    /// A table's bytes do not sum to zero.
    BadChecksum {
        /// The table (`RSDP` for the root pointer).
        table: Sig,
    },
    /// The XSDT names no table with this signature.
    MissingTable(Sig),
    /// A MADT entry is malformed.
    BadMadtEntry {
        /// Offset of the entry in the MADT.
        offset: usize,
    },
    /// The DSDT's AML could not be read.
    Aml {
        /// Offset in the DSDT.
        offset: usize,
        /// What went wrong.
        error: AmlError,
    },
    /// More processors than the reader has room for.
    TooManyProcessors {
        /// Its capacity.
        max: usize,
    },
    /// A processor device lacks an object this reader needs.
    MissingObject {
        /// Device name.
        device: Sig,
        /// Object name.
        object: Sig,
    },
    /// An object does not have the shape ACPI prescribes (or is outside our subset).
    InvalidObject {
        /// Device name.
        device: Sig,
        /// Object name.
        object: Sig,
    },
    /// Two processor devices share a `_UID`.
    DuplicateUid(u32),
    /// A processor device has no MADT entry with its `_UID`.
    ProcessorNotInMadt {
        /// The device's `_UID`.
        uid: u32,
    },
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::OutOfBounds { gpa, len } => {
                write!(f, "ACPI range {gpa:#x}+{len:#x} is outside guest memory")
            }
            Error::BadRsdpSignature => write!(f, "no RSDP signature at the RSDP address"),
            Error::UnsupportedRsdpRevision(r) => {
                write!(f, "RSDP revision {r} has no XSDT (need 2 or later)")
            }
            Error::BadSignature { expected, found } => {
                write!(f, "expected table {expected}, found {found}")
            }
            Error::BadLength { table, length } => {
                write!(f, "table {table} has an impossible length {length}")
            }
            Error::BadChecksum { table } => write!(f, "table {table} has a bad checksum"),
            Error::MissingTable(sig) => write!(f, "the XSDT lists no {sig} table"),
            Error::BadMadtEntry { offset } => {
                write!(f, "malformed MADT entry at offset {offset:#x}")
            }
            Error::Aml { offset, error } => {
                write!(f, "DSDT offset {offset:#x}: ")?;
                match error {
                    AmlError::Truncated => write!(f, "AML ends inside an object"),
                    AmlError::BadPkgLength => write!(f, "bad PkgLength"),
                    AmlError::UnsupportedOpcode(op) => write!(f, "unsupported opcode {op:#04x}"),
                    AmlError::BadName => write!(f, "bad name string"),
                    AmlError::BadString => write!(f, "bad string"),
                    AmlError::TooDeep => write!(f, "objects nest too deep"),
                }
            }
            Error::TooManyProcessors { max } => {
                write!(f, "more than {max} processors in the ACPI tables")
            }
            Error::MissingObject { device, object } => {
                write!(f, "processor {device} has no {object}")
            }
            Error::InvalidObject { device, object } => {
                write!(f, "processor {device} has a malformed {object}")
            }
            Error::DuplicateUid(uid) => write!(f, "two processors have _UID {uid}"),
            Error::ProcessorNotInMadt { uid } => {
                write!(f, "processor with _UID {uid} has no MADT entry")
            }
        }
    }
}

impl core::error::Error for Error {}
