//! P-state ladders made from frequencies: the rule for the default ladder and the power
//! model used wherever the host does not tell us a state's power.
//!
//! * **Default ladder** ([`default_ladder`]): [`DEFAULT_STEPS`] evenly spaced states from
//!   the nominal frequency down to half of it: 100 %, 87.5 %, 75 %, 62.5 %, 50 % (rounded
//!   down to whole MHz).
//! * **Power model** ([`power_at`]): dynamic power `P ∝ f·V²`, with the voltage falling
//!   linearly with frequency to half of its P0 value at f = 0, i.e. `V(f)/V0 = (1 + f/f0)/2`,
//!   so `P(f) = P0 · (f/f0) · ((1 + f/f0)/2)²`. P0 dissipates [`NOMINAL_POWER`]. At 50 % of
//!   the frequency a core draws 28 % of the power, the order of magnitude of real parts.
//! * **Control and status values** are the state's index (P0 = 0, P1 = 1, …). They are
//!   unique, the VMM maps them back through the same table when a guest writes
//!   IA32_PERF_CTL, and they survive the status masks OSes apply (Intel 16 bits, AMD 3 bits
//!   for up to 8 states).
//! * **Latencies** are [`DEFAULT_TRANSITION_LATENCY`] and [`DEFAULT_BUS_MASTER_LATENCY`].

use crate::pstate::{PState, PStateError, PStateTable, MAX_PSTATES};
use crate::units::{Mhz, Micros, MilliWatts};

/// Nominal frequency assumed when the host tells us nothing.
pub const DEFAULT_NOMINAL: Mhz = Mhz(2000);
/// Number of states in the default ladder.
pub const DEFAULT_STEPS: u32 = 5;
/// Power of P0 in generated ladders (a core of a server part at its base frequency).
pub const NOMINAL_POWER: MilliWatts = MilliWatts(10_000);
/// Transition latency of generated states (the order of Intel's and AMD's figures).
pub const DEFAULT_TRANSITION_LATENCY: Micros = Micros(10);
/// Bus-master latency of generated states.
pub const DEFAULT_BUS_MASTER_LATENCY: Micros = Micros(10);

/// Lowest nominal frequency the default ladder accepts; below it the steps would collide.
const MIN_NOMINAL: Mhz = Mhz(16);

/// Power at frequency `f` of a core that dissipates `p0` at `f0` (see the module docs).
pub fn power_at(f: Mhz, f0: Mhz, p0: MilliWatts) -> MilliWatts {
    if f0.0 == 0 {
        return p0;
    }
    let (f, f0, p0) = (u128::from(f.0), u128::from(f0.0), u128::from(p0.0));
    // p0 * (f/f0) * ((f0 + f) / (2 f0))^2, in integers.
    let p = p0 * f * (f0 + f) * (f0 + f) / (4 * f0 * f0 * f0);
    MilliWatts(u32::try_from(p).unwrap_or(u32::MAX))
}

/// The default ladder for a core of nominal frequency `nominal` (see the module docs).
pub fn default_ladder(nominal: Mhz) -> PStateTable {
    let nominal = Mhz(nominal.0.max(MIN_NOMINAL.0));
    let n = u64::from(nominal.0);
    let steps = u64::from(DEFAULT_STEPS);
    let freqs: Vec<Mhz> = (0..steps)
        // f_i = nominal * (1 - i / (2 (steps - 1))): from 100 % down to 50 %.
        .map(|i| n * (2 * (steps - 1) - i) / (2 * (steps - 1)))
        .map(|f| Mhz(u32::try_from(f).unwrap_or(u32::MAX)))
        .collect();
    from_frequencies(&freqs)
        .expect("the default ladder has DEFAULT_STEPS distinct non-zero frequencies")
}

/// `count` evenly spaced frequencies from `max` down to `min` (both included).
pub fn spread(max: Mhz, min: Mhz, count: u32) -> Vec<Mhz> {
    let (hi, lo) = (u64::from(max.0.max(min.0)), u64::from(max.0.min(min.0)));
    if count <= 1 || hi == lo {
        return vec![Mhz(max.0.max(min.0))];
    }
    let last = u64::from(count - 1);
    (0..=last)
        .map(|i| hi - (hi - lo) * i / last)
        .map(|f| Mhz(u32::try_from(f).unwrap_or(u32::MAX)))
        .collect()
}

/// A ladder of the given frequencies in any order: duplicates and zeros are dropped, the
/// rest sorted from the highest down, thinned to [`MAX_PSTATES`] evenly chosen states (the
/// highest and the lowest kept), and given powers, latencies and index control values as
/// the module docs say.
pub fn from_frequencies(freqs: &[Mhz]) -> Result<PStateTable, PStateError> {
    let mut freqs: Vec<Mhz> = freqs.iter().copied().filter(|f| f.0 > 0).collect();
    freqs.sort_unstable_by(|a, b| b.cmp(a));
    freqs.dedup();
    if freqs.len() > MAX_PSTATES {
        let last = freqs.len() - 1;
        freqs = (0..MAX_PSTATES)
            .map(|i| freqs[i * last / (MAX_PSTATES - 1)])
            .collect();
    }
    let Some(&f0) = freqs.first() else {
        return Err(PStateError::Empty);
    };
    let states = freqs
        .iter()
        .zip(0u64..)
        .map(|(&frequency, index)| PState {
            frequency,
            power: power_at(frequency, f0, NOMINAL_POWER),
            transition_latency: DEFAULT_TRANSITION_LATENCY,
            bus_master_latency: DEFAULT_BUS_MASTER_LATENCY,
            control: index,
            status: index,
        })
        .collect();
    PStateTable::new(states)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mhz(table: &PStateTable) -> Vec<u32> {
        table.states().iter().map(|s| s.frequency.0).collect()
    }

    #[test]
    fn default_ladder_runs_from_nominal_to_half_in_five_steps() {
        assert_eq!(
            mhz(&default_ladder(Mhz(2000))),
            [2000, 1750, 1500, 1250, 1000]
        );
        assert_eq!(
            mhz(&default_ladder(Mhz(2596))),
            [2596, 2271, 1947, 1622, 1298]
        );
    }

    #[test]
    fn default_ladder_survives_absurd_nominal_frequencies() {
        assert_eq!(default_ladder(Mhz(0)).len(), 5);
        assert_eq!(default_ladder(Mhz(u32::MAX)).len(), 5);
    }

    #[test]
    fn generated_states_use_index_control_values() {
        let table = default_ladder(Mhz(3000));
        for (i, s) in table.states().iter().enumerate() {
            assert_eq!((s.control, s.status), (i as u64, i as u64));
        }
    }

    #[test]
    fn power_follows_f_v_squared() {
        assert_eq!(power_at(Mhz(2000), Mhz(2000), MilliWatts(10_000)).0, 10_000);
        // f/f0 = 1/2, V/V0 = 3/4: 10 W * 0.5 * 0.5625 = 2.8125 W.
        assert_eq!(power_at(Mhz(1000), Mhz(2000), MilliWatts(10_000)).0, 2_812);
    }

    #[test]
    fn from_frequencies_sorts_dedups_and_thins() {
        let table = from_frequencies(&[Mhz(1000), Mhz(2000), Mhz(1000), Mhz(0)]).unwrap();
        assert_eq!(mhz(&table), [2000, 1000]);
        let many: Vec<Mhz> = (1..=40).map(|i| Mhz(i * 100)).collect();
        let table = from_frequencies(&many).unwrap();
        assert_eq!(table.len(), MAX_PSTATES);
        assert_eq!(table.p0().frequency, Mhz(4000));
        assert_eq!(table.states()[MAX_PSTATES - 1].frequency, Mhz(100));
    }

    #[test]
    fn from_frequencies_rejects_nothing_usable() {
        assert_eq!(from_frequencies(&[Mhz(0)]), Err(PStateError::Empty));
    }

    #[test]
    fn spread_includes_both_ends() {
        assert_eq!(
            spread(Mhz(3000), Mhz(1000), 5),
            [Mhz(3000), Mhz(2500), Mhz(2000), Mhz(1500), Mhz(1000)]
        );
        assert_eq!(spread(Mhz(3000), Mhz(3000), 5), [Mhz(3000)]);
    }
}
