//! P-states: one `_PSS` entry ([`PState`]) and the validated ladder a processor offers
//! ([`PStateTable`]).
//!
//! ACPI 6.5 §8.4.5.2: `_PSS` is a package of 6-DWORD packages sorted from the highest
//! performance state (P0) down. A guest selects a state by writing that state's `control`
//! value to the performance-control register of `_PCT` and recognises the current state by
//! comparing the performance-status register with `status`.

use crate::units::{Mhz, Micros, MilliWatts};

/// The largest number of P-states a table may hold.
///
/// ACPI puts no bound on `_PSS`; Linux's acpi-cpufreq and our firmware reader keep fixed
/// arrays, and real processors expose at most 16 software-visible states.
pub const MAX_PSTATES: usize = 16;

/// One performance state: one `_PSS` entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct PState {
    /// Core frequency in this state (`CoreFrequency`).
    pub frequency: Mhz,
    /// Typical power dissipated in this state (`Power`).
    pub power: MilliWatts,
    /// Worst-case time the processor is unavailable while switching to this state
    /// (`TransitionLatency`).
    pub transition_latency: Micros,
    /// Worst-case time bus masters are blocked while switching (`BusMasterLatency`).
    pub bus_master_latency: Micros,
    /// Value written to the performance-control register to enter this state (`Control`).
    pub control: u64,
    /// Value the performance-status register reads in this state (`Status`).
    pub status: u64,
}

impl PState {
    /// The six `_PSS` package elements in ACPI order.
    pub fn pss_fields(&self) -> [u64; 6] {
        [
            u64::from(self.frequency.0),
            u64::from(self.power.0),
            u64::from(self.transition_latency.0),
            u64::from(self.bus_master_latency.0),
            self.control,
            self.status,
        ]
    }
}

/// Why a list of P-states cannot be a `_PSS`.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PStateError {
    /// No state at all: `_PSS` needs at least P0.
    #[error("P-state table is empty")]
    Empty,
    /// More states than [`MAX_PSTATES`].
    #[error("P-state table has {0} states, at most {MAX_PSTATES} are supported")]
    TooMany(usize),
    /// A zero frequency.
    #[error("P{0} has a frequency of 0 MHz")]
    ZeroFrequency(usize),
    /// Frequencies must fall strictly from P0 down.
    #[error("P{index} ({this}) is not below P{} ({previous}): frequencies must fall strictly from P0", index - 1)]
    NotDescending {
        /// Index of the offending state.
        index: usize,
        /// Frequency of the state above it.
        previous: Mhz,
        /// Its own frequency.
        this: Mhz,
    },
    /// Two states share a control value, so a write could not select one of them.
    #[error("P{index} repeats control value {control:#x} of P{first}")]
    DuplicateControl {
        /// Index of the second state with this value.
        index: usize,
        /// Index of the first state with this value.
        first: usize,
        /// The shared control value.
        control: u64,
    },
    /// Control and status are DWORDs in `_PSS` (ACPI 6.5 §8.4.5.2).
    #[error("P{index}: {field} value {value:#x} does not fit in a DWORD")]
    NotDword {
        /// Index of the offending state.
        index: usize,
        /// `"control"` or `"status"`.
        field: &'static str,
        /// The value.
        value: u64,
    },
}

/// A validated P-state ladder: 1 to [`MAX_PSTATES`] states, frequencies strictly
/// descending from P0, control values unique and, like status values, DWORDs.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct PStateTable {
    states: Vec<PState>,
}

impl PStateTable {
    /// Validates `states` (P0 first) as a `_PSS`.
    pub fn new(states: Vec<PState>) -> Result<Self, PStateError> {
        if states.is_empty() {
            return Err(PStateError::Empty);
        }
        if states.len() > MAX_PSTATES {
            return Err(PStateError::TooMany(states.len()));
        }
        for (index, state) in states.iter().enumerate() {
            if state.frequency.0 == 0 {
                return Err(PStateError::ZeroFrequency(index));
            }
            for (field, value) in [("control", state.control), ("status", state.status)] {
                if value > u64::from(u32::MAX) {
                    return Err(PStateError::NotDword {
                        index,
                        field,
                        value,
                    });
                }
            }
            if index > 0 {
                let previous = states[index - 1].frequency;
                if state.frequency >= previous {
                    return Err(PStateError::NotDescending {
                        index,
                        previous,
                        this: state.frequency,
                    });
                }
            }
            if let Some(first) = states[..index]
                .iter()
                .position(|s| s.control == state.control)
            {
                return Err(PStateError::DuplicateControl {
                    index,
                    first,
                    control: state.control,
                });
            }
        }
        Ok(Self { states })
    }

    /// The states, P0 first.
    pub fn states(&self) -> &[PState] {
        &self.states
    }

    /// Number of states.
    pub fn len(&self) -> usize {
        self.states.len()
    }

    /// Always false: a table holds at least P0. Present for API symmetry with `len`.
    pub fn is_empty(&self) -> bool {
        self.states.is_empty()
    }

    /// The highest-performance state.
    pub fn p0(&self) -> &PState {
        &self.states[0]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(mhz: u32, control: u64) -> PState {
        PState {
            frequency: Mhz(mhz),
            power: MilliWatts(1000),
            transition_latency: Micros(10),
            bus_master_latency: Micros(10),
            control,
            status: control,
        }
    }

    #[test]
    fn accepts_descending_unique_states() {
        let table = PStateTable::new(vec![state(2000, 0), state(1500, 1), state(1000, 2)]);
        assert_eq!(table.unwrap().len(), 3);
    }

    #[test]
    fn rejects_empty_table() {
        assert_eq!(PStateTable::new(vec![]), Err(PStateError::Empty));
    }

    #[test]
    fn rejects_more_than_sixteen_states() {
        let states = (0..17)
            .map(|i| state(3000 - i * 100, u64::from(i)))
            .collect();
        assert_eq!(PStateTable::new(states), Err(PStateError::TooMany(17)));
    }

    #[test]
    fn rejects_equal_or_rising_frequencies() {
        let err = PStateTable::new(vec![state(2000, 0), state(2000, 1)]).unwrap_err();
        assert!(matches!(err, PStateError::NotDescending { index: 1, .. }));
        let err = PStateTable::new(vec![state(1000, 0), state(2000, 1)]).unwrap_err();
        assert!(matches!(err, PStateError::NotDescending { index: 1, .. }));
    }

    #[test]
    fn rejects_duplicate_control_values() {
        let err = PStateTable::new(vec![state(2000, 7), state(1000, 7)]).unwrap_err();
        assert_eq!(
            err,
            PStateError::DuplicateControl {
                index: 1,
                first: 0,
                control: 7
            }
        );
    }

    #[test]
    fn rejects_control_wider_than_a_dword() {
        let err = PStateTable::new(vec![state(2000, 1 << 32)]).unwrap_err();
        assert!(matches!(
            err,
            PStateError::NotDword {
                field: "control",
                ..
            }
        ));
    }

    #[test]
    fn rejects_zero_frequency() {
        let err = PStateTable::new(vec![state(0, 0)]).unwrap_err();
        assert_eq!(err, PStateError::ZeroFrequency(0));
    }

    #[test]
    fn error_messages_read_well() {
        let err = PStateTable::new(vec![state(1000, 0), state(2000, 1)]).unwrap_err();
        assert_eq!(
            err.to_string(),
            "P1 (2000 MHz) is not below P0 (1000 MHz): frequencies must fall strictly from P0"
        );
    }
}
