//! Guests boot under KVM, run in ring 3, report to the console, and end — with their
//! failures reported by name and reason while the VMM and other guests carry on.

use std::time::Duration;

use compart_tests::{
    boot, idle_topology, kvm_test, poll, thread_affinity, thread_cpu_ns, topology, Capture,
};
use compart_vmm::topology::{core_list, HostCore};
use compart_vmm::vstate::exits::{Failure, FailureKind};
use compart_vmm::{ControlRequest, GuestState};

const BOOT: Duration = Duration::from_secs(20);

fn guest(name: &str, cmdline: &str, policy: &str) -> String {
    format!(
        "[[guest]]\nname = \"{name}\"\nrole = \"app\"\nimage = \"selftest\"\ncmdline = \"{cmdline}\"\non_failure = \"{policy}\"\n"
    )
}

kvm_test! {
    fn a_guest_prints_and_its_exit_status_is_the_outcome() {
        let t = topology(&guest("hello", "heap lines=3 exit=7", "stop-all"));
        let (vmm, capture) = boot(&t);
        let outcome = vmm.wait();
        assert_eq!(outcome.state("hello"), Some(&GuestState::Exited(7)));
        assert_eq!(outcome.exit_code(), 7);
        let own: Vec<String> = capture
            .of("hello")
            .into_iter()
            .filter(|l| !l.starts_with("acpi: "))
            .collect();
        assert_eq!(
            own,
            vec![
                "heap ok: sum 49995000",
                "line 0",
                "line 1",
                "line 2",
                "hello from hello (app), exiting with 7"
            ]
        );
    }
}

kvm_test! {
    fn idle_topology_boots_five_guests_pinned_as_asked() {
        let t = idle_topology();
        let (vmm, capture) = boot(&t);
        for g in &t.guests {
            let cores = core_list(&g.vcpu_cores[0]);
            capture.wait_for(
                &g.name,
                &format!(
                    "role {} up: 1 vCPU(s), 4096 KiB RAM, vCPU 0 on host core(s) [{}]",
                    g.role,
                    cores.replace(',', ", ")
                ),
                BOOT,
            );
        }
        let threads = poll(BOOT, "five vCPU threads", || {
            let v = vmm.vcpu_threads();
            (v.len() == 5).then_some(v)
        });
        for th in &threads {
            let want = &t
                .guests
                .iter()
                .find(|g| g.name == th.guest)
                .unwrap()
                .vcpu_cores[0];
            assert_eq!(
                thread_affinity(std::process::id(), th.tid),
                core_list(want),
                "affinity of {}'s vCPU {}",
                th.guest,
                th.vcpu
            );
        }
        vmm.handle().stop();
        let outcome = vmm.wait();
        assert!(
            outcome
                .guests
                .iter()
                .all(|(_, s)| *s == GuestState::Stopped),
            "{outcome:?}"
        );
        assert_eq!(outcome.exit_code(), 0);
    }
}

kvm_test! {
    fn idle_guests_use_under_one_percent_of_a_core() {
        let t = idle_topology();
        let (vmm, capture) = boot(&t);
        for g in &t.guests {
            capture.wait_for(&g.name, "idle", BOOT);
        }
        let threads = poll(BOOT, "five vCPU threads", || {
            let v = vmm.vcpu_threads();
            (v.len() == 5).then_some(v)
        });
        // Let the guests settle into hlt, then measure 5 s.
        std::thread::sleep(Duration::from_millis(200));
        let before: u64 = threads.iter().map(|t| thread_cpu_ns(t.tid)).sum();
        let window = Duration::from_secs(5);
        std::thread::sleep(window);
        let after: u64 = threads.iter().map(|t| thread_cpu_ns(t.tid)).sum();
        let share = (after - before) as f64 / window.as_nanos() as f64;
        eprintln!("five idle guests used {:.4} % of a core", share * 100.0);
        assert!(
            share < 0.01,
            "idle guests used {:.3} % of a core",
            share * 100.0
        );
        vmm.handle().stop();
        vmm.wait();
    }
}

kvm_test! {
    fn failing_guests_are_reported_and_the_others_keep_running() {
        let text = [
            guest("survivor", "halt", "stop-guest"),
            guest("panicker", "panic", "stop-guest"),
            guest("faulter", "page-fault", "stop-guest"),
        ]
        .concat();
        let t = topology(&text);
        let (vmm, _) = boot(&t);
        let stopper = vmm.handle();
        let waiter = std::thread::spawn(move || vmm.wait());
        // The survivor halts; give the others time to fail while it stays up.
        std::thread::sleep(Duration::from_secs(2));
        assert!(
            !waiter.is_finished(),
            "the VMM ended although a guest was still running"
        );
        stopper.stop();
        let outcome = waiter.join().unwrap();

        assert_eq!(outcome.state("survivor"), Some(&GuestState::Stopped));
        match outcome.state("panicker") {
            Some(GuestState::Failed(Failure {
                kind: FailureKind::Panic { message },
                ..
            })) => {
                assert!(
                    message.contains("deliberate panic (cmdline `panic`)"),
                    "{message}"
                );
                assert!(
                    message.starts_with("panicked at selftest/src/main.rs:"),
                    "{message}"
                );
            }
            other => panic!("panicker: {other:?}"),
        }
        match outcome.state("faulter") {
            Some(GuestState::Failed(Failure {
                kind: FailureKind::Exception {
                    vector: 14, cr2: 0, ..
                },
                rip: Some(rip),
            })) => {
                assert!(*rip >= 0x20_0000)
            }
            other => panic!("faulter: {other:?}"),
        }
        assert_eq!(outcome.exit_code(), compart_vmm::runtime::EXIT_GUEST_FAILED);
    }
}

kvm_test! {
    fn stop_all_policy_stops_every_guest() {
        let text = [
            guest("bystander", "halt", "stop-guest"),
            guest("crasher", "panic", "stop-all"),
        ]
        .concat();
        let t = topology(&text);
        let waiter = {
            let (vmm, _) = boot(&t);
            std::thread::spawn(move || vmm.wait())
        };
        poll(BOOT, "the VMM to stop everything", || {
            waiter.is_finished().then_some(())
        });
        let outcome = waiter.join().unwrap();
        assert_eq!(outcome.state("bystander"), Some(&GuestState::Stopped));
        assert!(matches!(
            outcome.state("crasher"),
            Some(GuestState::Failed(f)) if f.is_panic()
        ));
    }
}

kvm_test! {
    fn a_guest_with_several_vcpus_boots_and_exits() {
        let t = topology(
            "[[guest]]\nname = \"wide\"\nrole = \"app\"\nimage = \"selftest\"\nvcpus = 4\ncmdline = \"exit=0\"\n",
        );
        let (vmm, _) = boot(&t);
        let outcome = vmm.wait();
        assert_eq!(outcome.state("wide"), Some(&GuestState::Exited(0)));
        assert_eq!(outcome.exit_code(), 0);
    }
}

kvm_test! {
    fn memory_too_small_for_image_stacks_and_heap_is_refused_before_anything_runs() {
        let t = topology(
            "[[guest]]\nname = \"tight\"\nrole = \"app\"\nimage = \"selftest\"\nmemory_mib = 3\nvcpus = 16\n",
        );
        let err = compart_vmm::start(&t, Capture::default().sink()).unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.starts_with("guest tight: 3 MiB cannot hold its image"),
            "{msg}"
        );
        assert!(msg.ends_with("raise memory_mib"), "{msg}");
    }
}

kvm_test! {
    fn a_guest_cannot_write_its_page_tables_or_idt_nor_run_code_from_its_stack() {
        let text = [
            guest("tables", "write-page-tables", "stop-guest"),
            guest("idt", "write-idt", "stop-guest"),
            guest("stack", "exec-stack", "stop-guest"),
            guest("msr", "foreign-msr", "stop-guest"),
        ]
        .concat();
        let (vmm, capture) = boot(&topology(&text));
        let outcome = vmm.wait();
        let failure = |name: &str| match outcome.state(name) {
            Some(GuestState::Failed(
                f @ Failure {
                    kind: FailureKind::Exception { vector: 14, .. },
                    ..
                },
            )) => {
                eprintln!("{name}: {f}");
                f.to_string()
            }
            other => panic!("{name}: {other:?}, console {:?}", capture.of(name)),
        };
        assert!(
            failure("tables").starts_with(&format!(
                "page fault: ring-3 write to a supervisor-only page at {:#x} (the guest's page tables)",
                compart_abi::PAGE_TABLES_GPA
            )),
            "{}",
            failure("tables")
        );
        assert!(
            failure("idt").starts_with(&format!(
                "page fault: ring-3 write to a supervisor-only page at {:#x} (the IDT)",
                compart_abi::IDT_GPA
            )),
            "{}",
            failure("idt")
        );
        let stack = failure("stack");
        assert!(
            stack.starts_with("page fault: ring-3 instruction fetch from a no-execute page at"),
            "{stack}"
        );
        assert_eq!(outcome.state("msr"), Some(&GuestState::Exited(0)));
        assert!(
            capture
                .of("msr")
                .contains(&"foreign msr: EFER read refused, LSTAR write refused".to_string()),
            "{:?}",
            capture.of("msr")
        );
        for name in ["tables", "idt", "stack"] {
            assert!(
                capture.of(name).iter().all(|l| !l.contains("?!")),
                "{name}: {:?}",
                capture.of(name)
            );
        }
    }
}

kvm_test! {
    fn an_image_built_with_a_proc_macro_runs() {
        // The `derive` image serialises a struct with serde's derive (a proc macro, built
        // for the host while the image is built for the guest) and parses it back.
        let t = topology(
            "[[guest]]\nname = \"json\"\nrole = \"tcp\"\nimage = \"derive\"\ncmdline = \"a b=c\"\n",
        );
        let (vmm, capture) = boot(&t);
        let outcome = vmm.wait();
        assert_eq!(
            outcome.state("json"),
            Some(&GuestState::Exited(0)),
            "{outcome:?}"
        );
        let own: Vec<String> = capture
            .of("json")
            .into_iter()
            .filter(|l| !l.starts_with("acpi: "))
            .collect();
        assert_eq!(
            own,
            [
                r#"derive: {"name":"json","role":"tcp","channels":0,"vcpus":1,"memory_mib":4,"cmdline":"a b=c"}"#,
                "derive: round trip ok"
            ]
        );
    }
}

kvm_test! {
    fn after_a_live_move_thread_info_reports_the_new_cores() {
        let t = topology(&format!(
            "{}cores = [0]\n",
            guest("mover", "halt", "stop-all")
        ));
        let (vmm, _capture) = boot(&t);
        let control = vmm.handle();
        let threads = poll(BOOT, "the vCPU thread", || {
            let v = vmm.vcpu_threads();
            (v.len() == 1).then_some(v)
        });
        assert_eq!(threads[0].cores, vec![HostCore(0)]);
        let waiter = std::thread::spawn(move || {
            let moved = control.request(
                ControlRequest::Move {
                    guest: "mover".into(),
                    cores: vec![HostCore(1)],
                },
                Duration::from_secs(10),
            );
            (moved, control)
        });
        // Coordinate from this thread, so that the VMM is still ours to inspect after.
        let mut vmm = vmm;
        poll(BOOT, "the move", || {
            vmm.serve_pending();
            waiter.is_finished().then_some(())
        });
        let (moved, control) = waiter.join().unwrap();
        moved.unwrap();
        let threads = vmm.vcpu_threads();
        assert_eq!(
            threads[0].cores,
            vec![HostCore(1)],
            "thread info after the move"
        );
        assert_eq!(thread_affinity(std::process::id(), threads[0].tid), "1");
        control.stop();
        vmm.wait();
    }
}

kvm_test! {
    fn a_vmm_dropped_without_waiting_stops_and_joins_its_vcpu_threads() {
        let t = topology(&guest("sleeper", "halt", "stop-all"));
        let (vmm, _capture) = boot(&t);
        let tid = poll(BOOT, "the vCPU thread", || {
            vmm.vcpu_threads().first().map(|t| t.tid)
        });
        let task = format!("/proc/self/task/{tid}");
        assert!(std::path::Path::new(&task).exists());
        drop(vmm);
        assert!(
            !std::path::Path::new(&task).exists(),
            "the vCPU thread outlived its VMM"
        );
    }
}

/// Runs a selftest guest with `cmdline` until it exits (or fails), stopping it after
/// `limit` so that a guest stuck in a broken halt fails the test instead of hanging it.
fn run_selftest(name: &str, cmdline: &str, limit: Duration) -> (GuestState, Vec<String>) {
    let (vmm, capture) = boot(&topology(&guest(name, cmdline, "stop-guest")));
    let handle = vmm.handle();
    let waiter = std::thread::spawn(move || vmm.wait());
    let deadline = std::time::Instant::now() + limit;
    while !waiter.is_finished() && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    handle.stop();
    let outcome = waiter.join().unwrap();
    let state = outcome
        .state(name)
        .cloned()
        .expect("the guest has an outcome");
    (state, capture.of(name))
}

kvm_test! {
    fn an_interrupt_ends_a_halt_and_returns_to_ring_3_through_either_halt_route() {
        let (state, lines) = run_selftest("waker", "eoi wake=200", Duration::from_secs(20));
        assert_eq!(state, GuestState::Exited(0), "{lines:?}");
        assert!(
            lines.contains(&"wake: an interrupt stays pending in ring 3 until the halt".to_string()),
            "{lines:?}"
        );
        // The boot probe decides whether interrupts need the EOI. The halt above went
        // through the gate it left (a wrong "no EOI" would have left the probe's interrupt
        // in service and blocked this one). The entry with the EOI always runs (hardware-
        // virtualised KVM uses it); the one without only where the probe allows it (this
        // nested host).
        assert!(
            lines
                .iter()
                .any(|l| l == "eoi: host completes interrupts on delivery: true"
                    || l == "eoi: host completes interrupts on delivery: false"),
            "{lines:?}"
        );
        let completes = lines
            .iter()
            .any(|l| l == "eoi: host completes interrupts on delivery: true");
        let entries: &[&str] = if completes {
            &["with EOI", "without EOI"]
        } else {
            &["with EOI"]
        };
        for entry in entries {
            for route in ["Int3", "Hlt"] {
                let want = format!(
                    "wake {route} {entry}: 200 halts returned to ring 3 right after the halt, "
                );
                assert!(
                    lines.iter().any(|l| l.starts_with(&want)),
                    "{route} {entry}: {lines:?}"
                );
            }
        }
    }
}

kvm_test! {
    fn a_guest_sleeps_on_the_apic_timer_for_as_long_as_asked() {
        // No doorbell, no other interrupt: only the timer can end these halts.
        let (state, lines) = run_selftest("sleeper", "sleep=10000,1000,100", Duration::from_secs(20));
        assert_eq!(state, GuestState::Exited(0), "{lines:?}");
        for asked_us in [10_000u64, 1000, 100] {
            let prefix = format!("sleep {asked_us} us: slept ");
            let line = lines
                .iter()
                .find(|l| l.starts_with(&prefix))
                .unwrap_or_else(|| panic!("no {asked_us} us sleep: {lines:?}"));
            eprintln!("{line}");
            let slept_ns: u64 = line[prefix.len()..]
                .split_whitespace()
                .next()
                .and_then(|v| v.parse().ok())
                .expect("slept N ns");
            let asked_ns = asked_us * 1000;
            assert!(slept_ns >= asked_ns, "woke early: {line}");
            // Generous for a loaded machine; a halt the timer does not end never returns.
            assert!(slept_ns < asked_ns * 3 / 2 + 5_000_000, "overslept: {line}");
        }
    }
}

kvm_test! {
    fn only_a_guest_of_one_vcpu_reaches_its_local_apic_and_the_others_sleep_on_the_msr_timer() {
        // One vCPU: ring 3 reads its APIC (it arms its timer there).
        let (state, lines) = run_selftest("one", "read-lapic", Duration::from_secs(20));
        assert_eq!(state, GuestState::Exited(0), "{lines:?}");
        assert!(lines.contains(&"read-lapic: SVR 0x1ff".to_string()), "{lines:?}");
        // Two vCPUs: the APIC page is supervisor-only (an INIT/SIPI from ring 3 would
        // start the sibling in real mode), so the read faults...
        let two = |name: &str, cmdline: &str| {
            format!("{}vcpus = 2\n", guest(name, cmdline, "stop-guest"))
        };
        let (vmm, capture) = boot(&topology(&format!(
            "{}{}",
            two("reader", "read-lapic"),
            two("sleeper", "sleep=10000,1000")
        )));
        // A timer that never fires would leave the sleeper halted: stop it after 20 s.
        let handle = vmm.handle();
        let waiter = std::thread::spawn(move || vmm.wait());
        let limit = std::time::Instant::now() + Duration::from_secs(20);
        while !waiter.is_finished() && std::time::Instant::now() < limit {
            std::thread::sleep(Duration::from_millis(20));
        }
        handle.stop();
        let outcome = waiter.join().unwrap();
        match outcome.state("reader") {
            Some(GuestState::Failed(f)) => assert!(
                f.to_string().starts_with(&format!(
                    "page fault: ring-3 read from a supervisor-only page at {:#x} (the APICs)",
                    compart_abi::lapic::BASE_GPA + compart_abi::lapic::SVR
                )),
                "{f}"
            ),
            other => panic!("reader: {other:?}, console {:?}", capture.of("reader")),
        }
        // ...and the timer runs in TSC-deadline mode through the stub instead.
        assert_eq!(
            outcome.state("sleeper"),
            Some(&GuestState::Exited(0)),
            "{:?}",
            capture.of("sleeper")
        );
        let lines = capture.of("sleeper");
        for asked_us in [10_000u64, 1000] {
            let prefix = format!("sleep {asked_us} us: slept ");
            let line = lines
                .iter()
                .find(|l| l.starts_with(&prefix))
                .unwrap_or_else(|| panic!("no {asked_us} us sleep: {lines:?}"));
            let slept_ns: u64 = line[prefix.len()..]
                .split_whitespace()
                .next()
                .unwrap()
                .parse()
                .unwrap();
            assert!(slept_ns >= asked_us * 1000, "woke early: {line}");
            assert!(slept_ns < asked_us * 1000 + 5_000_000, "{line}");
        }
    }
}
