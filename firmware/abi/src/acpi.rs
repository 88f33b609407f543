//! ACPI values the VMM's table writer (`compart-acpi`) and the guest's reader
//! (`compart-acpi-reader`) must agree on. Only values live here: the writer and the
//! reader stay separate code, so that the round trip between them
//! (`acpi/tests/roundtrip.rs`) checks one against the other, and ACPICA checks the
//! writer against the specification (`acpi/tests/acpica.rs`).

/// `_PSD` CoordType (ACPI 6.5 §8.4.5.5): who coordinates the processors of a domain.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Coordination {
    /// SW_ALL (0xFC): the OS must set the same state on every processor of the domain.
    SwAll,
    /// SW_ANY (0xFD): the OS may set any processor; a change applies to the domain.
    SwAny,
    /// HW_ALL (0xFE): the OS sets each processor; hardware resolves the domain.
    HwAll,
}

impl Coordination {
    /// All three types, for tests and tools.
    pub const ALL: [Coordination; 3] = [
        Coordination::SwAll,
        Coordination::SwAny,
        Coordination::HwAll,
    ];

    /// The value in `_PSD`.
    pub const fn acpi_value(self) -> u32 {
        match self {
            Coordination::SwAll => 0xFC,
            Coordination::SwAny => 0xFD,
            Coordination::HwAll => 0xFE,
        }
    }

    /// The coordination type of a `_PSD` value.
    pub const fn from_acpi_value(value: u64) -> Option<Self> {
        match value {
            0xFC => Some(Coordination::SwAll),
            0xFD => Some(Coordination::SwAny),
            0xFE => Some(Coordination::HwAll),
            _ => None,
        }
    }

    /// Its name in topology files and messages: `sw-all`, `sw-any`, `hw-all`.
    pub const fn name(self) -> &'static str {
        match self {
            Coordination::SwAll => "sw-all",
            Coordination::SwAny => "sw-any",
            Coordination::HwAll => "hw-all",
        }
    }
}

/// Address space id of Functional Fixed Hardware: a Generic Register in this space
/// with our `_PCT` names an MSR, whose number is in its address field.
pub const ADDRESS_SPACE_FFH: u8 = 0x7F;

/// The Generic Register descriptor (ACPI 6.5 §6.4.3.7) of a `_PCT` register.
pub mod generic_register {
    /// Large resource item name.
    pub const DESCRIPTOR: u8 = 0x82;
    /// Its length field: the bytes after the 3-byte header.
    pub const LENGTH: u16 = 0x0C;
    /// Register bit width of an MSR.
    pub const MSR_BIT_WIDTH: u8 = 64;
    /// Access size 4: QWORD.
    pub const ACCESS_SIZE_QWORD: u8 = 4;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn coordination_values_are_acpis_and_round_trip() {
        let values = Coordination::ALL.map(|c| c.acpi_value());
        assert_eq!(values, [0xFC, 0xFD, 0xFE]);
        for c in Coordination::ALL {
            assert_eq!(
                Coordination::from_acpi_value(c.acpi_value().into()),
                Some(c)
            );
        }
        assert_eq!(Coordination::from_acpi_value(0), None);
        assert_eq!(Coordination::from_acpi_value(0x1_0000_00FC), None);
        assert_eq!(
            Coordination::ALL.map(|c| c.name()),
            ["sw-all", "sw-any", "hw-all"]
        );
    }
}
