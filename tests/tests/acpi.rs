//! A guest boots, reads its ACPI tables, and reports exactly the P-states, `_PPC`,
//! `_PSD` domains and coordination type the topology gave it.

use std::time::Duration;

use compart_tests::{boot, kvm_test, topology};

kvm_test! {
    fn guest_reports_exactly_the_pstates_domains_and_coordination_it_was_given() {
        let t = topology(
            r#"
            [pstates]
            coordination = "sw-any"
            ladder = [
                { mhz = 3000, power_mw = 12000, latency_us = 15, bus_master_latency_us = 5 },
                { mhz = 2000, power_mw = 6000 },
                { mhz = 1000, power_mw = 2000, latency_us = 20 },
            ]

            [[guest]]
            name = "reader"
            role = "app"
            image = "selftest"
            vcpus = 4
            vcpu_cores = [[0], [0], [1], [0, 1]]
            ppc = 1
            cmdline = "exit=0"
            "#,
        );
        let (vmm, capture) = boot(&t);
        let outcome = vmm.wait();
        assert_eq!(outcome.exit_code(), 0, "{outcome:?}");

        // _PSD follows pinning: vCPUs on one host frequency domain share it; the floating
        // vCPU 3 has a domain of its own, numbered after the host's domains.
        let domains = &t.freq_domains;
        let host_domains = domains.domains().len() as u32;
        let domain = |vcpu: usize| match vcpu {
            0 | 1 => domains.domain_of(0).unwrap(),
            2 => domains.domain_of(1).unwrap(),
            _ => host_domains + 3,
        };
        let members = |d: u32| (0..4).filter(|&v| domain(v) == d).count();

        let mut expected = Vec::new();
        for vcpu in 0..4 {
            let d = domain(vcpu);
            expected.push(format!(
                "acpi: C00{vcpu} uid {vcpu} apic {vcpu}: _PCT control MSR 0x199 status MSR 0x198; \
                 _PSD domain {d} sw-any of {}; _PPC 1",
                members(d)
            ));
            for (i, (mhz, mw, lat, bm)) in [
                (3000, 12000, 15, 5),
                (2000, 6000, 10, 10),
                (1000, 2000, 20, 10),
            ]
            .into_iter()
            .enumerate()
            {
                expected.push(format!(
                    "acpi: C00{vcpu}   P{i}: {mhz} MHz {mw} mW latency {lat} us bus-master {bm} us \
                     control {i:#x} status {i:#x}"
                ));
            }
        }
        let got: Vec<String> = capture
            .of("reader")
            .into_iter()
            .filter(|l| l.starts_with("acpi: "))
            .collect();
        assert_eq!(got, expected);
    }
}

kvm_test! {
    fn every_guest_of_the_idle_topology_gets_the_host_ladder() {
        let t = compart_tests::idle_topology();
        let (vmm, capture) = boot(&t);
        for g in &t.guests {
            capture.wait_for(&g.name, "idle", Duration::from_secs(20));
        }
        vmm.handle().stop();
        vmm.wait();
        for g in &t.guests {
            let states: Vec<String> = capture
                .of(&g.name)
                .into_iter()
                .filter(|l| l.starts_with("acpi: C000   P"))
                .collect();
            assert_eq!(states.len(), t.pstates.len(), "{}: {states:?}", g.name);
            for (line, s) in states.iter().zip(t.pstates.states()) {
                assert!(line.contains(&format!(" {} MHz ", s.frequency.0)), "{line}");
            }
        }
    }
}
