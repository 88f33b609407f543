//! Frequency requests from a guest, on the soft backend: the same compute loop takes
//! f0/f longer at a slower P-state, the guest's own APERF/MPERF agrees, and values the
//! platform does not offer are refused where the guest can see it.
//!
//! One test function per concern, in its own test binary, so no other test's guests
//! compete for the cores while wall time is measured.

use compart_tests::{boot, kvm_test, topology};
use compart_vmm::GuestState;

/// `freq P2 1200 MHz: status PSome(2) loop 123 us aperf/mperf 500 permille`
fn parse_freq(line: &str) -> (usize, u64, u64) {
    let idx = line["freq P".len()..]
        .split_whitespace()
        .next()
        .unwrap()
        .parse()
        .unwrap();
    let field = |key: &str| -> u64 {
        let rest = &line[line.find(key).unwrap() + key.len()..];
        rest.split_whitespace().next().unwrap().parse().unwrap()
    };
    (idx, field(" loop "), field(" aperf/mperf "))
}

kvm_test! {
    fn soft_scaling_slows_a_compute_loop_by_f0_over_f_and_aperf_mperf_agrees() {
        let t = topology(
            r#"
            [pstates]
            backend = "soft"
            ladder = [
                { mhz = 2400, power_mw = 9000 },
                { mhz = 1800, power_mw = 5000 },
                { mhz = 1200, power_mw = 2500 },
            ]
            [[guest]]
            name = "cruncher"
            role = "app"
            image = "selftest"
            cores = [1]
            cmdline = "freq=0,2,0,2,0,2 pstate-control=0x77"
            "#,
        );
        let (vmm, capture) = boot(&t);
        let outcome = vmm.wait();
        assert_eq!(outcome.state("cruncher"), Some(&GuestState::Exited(0)));
        let lines = capture.of("cruncher");
        let runs: Vec<(usize, u64, u64)> = lines
            .iter()
            .filter(|l| l.starts_with("freq P"))
            .map(|l| parse_freq(l))
            .collect();
        assert_eq!(runs.len(), 6, "{lines:?}");

        // Best of three interleaved runs per state: noise (a busy host, another test) only ever
        // makes a loop slower.
        let best = |p: usize| runs.iter().filter(|r| r.0 == p).map(|r| r.1).min().unwrap();
        let (fast, slow) = (best(0), best(2));
        let expected = 2400.0 / 1200.0;
        let measured = slow as f64 / fast as f64;
        eprintln!("P0 loop {fast} us, P2 loop {slow} us: ratio {measured:.3} (expected {expected})");
        assert!(
            (measured / expected - 1.0).abs() <= 0.10,
            "wall-time ratio {measured:.3} is not within 10 % of f0/fmin = {expected}"
        );

        // The guest's own measurement: ΔAPERF/ΔMPERF = f/fmax.
        for &(p, _, permille) in &runs {
            let want = [1000.0, 750.0, 500.0][p];
            assert!(
                (permille as f64 / want - 1.0).abs() <= 0.10,
                "P{p}: APERF/MPERF {permille}‰, expected {want}‰"
            );
        }

        assert!(
            lines
                .iter()
                .any(|l| l.starts_with("pstate control 0x77 refused: Refused")),
            "{lines:?}"
        );
    }
}

kvm_test! {
    fn states_above_ppc_are_refused_and_the_guest_stays_where_it_was() {
        let t = topology(
            r#"
            [pstates]
            backend = "soft"
            ladder = [{ mhz = 2000, power_mw = 8000 }, { mhz = 1500, power_mw = 4000 }, { mhz = 1000, power_mw = 2000 }]
            [[guest]]
            name = "capped"
            role = "app"
            image = "selftest"
            ppc = 1
            pstate = 2
            cmdline = "pstate-control=0x0 pstate-control=0x1"
            "#,
        );
        let (vmm, capture) = boot(&t);
        assert_eq!(
            vmm.pstates()[0].effective,
            2,
            "starts in the topology's P-state"
        );
        let outcome = vmm.wait();
        assert_eq!(outcome.state("capped"), Some(&GuestState::Exited(0)));
        let lines = capture.of("capped");
        assert!(
            lines.contains(&"pstate control 0x0 refused: Refused, still PSome(2)".to_string()),
            "{lines:?}"
        );
        assert!(
            lines.contains(&"pstate control 0x1 accepted, now PSome(1)".to_string()),
            "{lines:?}"
        );
    }
}
