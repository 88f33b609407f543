//! Guests boot under KVM, run in ring 3, report to the console, and end — with their
//! failures reported by name and reason while the VMM and other guests carry on.

use std::time::Duration;

use compart_tests::{
    default_topology, poll, require_kvm, thread_affinity, thread_cpu_ns, topology, Capture,
};
use compart_vmm::topology::core_list;
use compart_vmm::vstate::vcpu::Failure;
use compart_vmm::GuestState;

const BOOT: Duration = Duration::from_secs(20);

fn guest(name: &str, cmdline: &str, policy: &str) -> String {
    format!(
        "[[guest]]\nname = \"{name}\"\nrole = \"app\"\nimage = \"selftest\"\ncmdline = \"{cmdline}\"\non_failure = \"{policy}\"\n"
    )
}

#[test]
fn a_guest_prints_and_its_exit_status_is_the_outcome() {
    if !require_kvm() {
        return;
    }
    let capture = Capture::default();
    let t = topology(&guest("hello", "heap lines=3 exit=7", "stop-all"));
    let outcome = compart_vmm::start(&t, capture.sink()).unwrap().wait();
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

#[test]
fn default_topology_boots_five_guests_pinned_as_asked() {
    if !require_kvm() {
        return;
    }
    let capture = Capture::default();
    let t = default_topology();
    let vmm = compart_vmm::start(&t, capture.sink()).unwrap();
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

#[test]
fn idle_guests_use_under_one_percent_of_a_core() {
    if !require_kvm() {
        return;
    }
    let capture = Capture::default();
    let t = default_topology();
    let vmm = compart_vmm::start(&t, capture.sink()).unwrap();
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

/// Runs a selftest guest with `cmdline` until it exits (or fails), stopping it after
/// `limit` so that a guest stuck in a broken halt fails the test instead of hanging it.
fn run_selftest(name: &str, cmdline: &str, limit: Duration) -> (GuestState, Vec<String>) {
    let capture = Capture::default();
    let t = topology(&guest(name, cmdline, "stop-guest"));
    let vmm = compart_vmm::start(&t, capture.sink()).unwrap();
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

#[test]
fn an_interrupt_ends_a_halt_and_returns_to_ring_3_through_either_halt_route() {
    if !require_kvm() {
        return;
    }
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

#[test]
fn a_guest_sleeps_on_the_apic_timer_for_as_long_as_asked() {
    if !require_kvm() {
        return;
    }
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

#[test]
fn failing_guests_are_reported_and_the_others_keep_running() {
    if !require_kvm() {
        return;
    }
    let capture = Capture::default();
    let text = [
        guest("survivor", "halt", "stop-guest"),
        guest("panicker", "panic", "stop-guest"),
        guest("tripler", "triple-fault", "stop-guest"),
        guest("faulter", "page-fault", "stop-guest"),
    ]
    .concat();
    let t = topology(&text);
    let vmm = compart_vmm::start(&t, capture.sink()).unwrap();
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
        Some(GuestState::Failed(Failure::Panic { message })) => {
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
    match outcome.state("tripler") {
        Some(GuestState::Failed(Failure::TripleFault { rip })) => assert!(*rip >= 0x20_0000),
        other => panic!("tripler: {other:?}"),
    }
    match outcome.state("faulter") {
        Some(GuestState::Failed(Failure::Exception {
            vector: 14,
            cr2: 0,
            rip,
            ..
        })) => {
            assert!(*rip >= 0x20_0000)
        }
        other => panic!("faulter: {other:?}"),
    }
    assert_eq!(outcome.exit_code(), compart_vmm::runtime::EXIT_GUEST_FAILED);
}

#[test]
fn stop_all_policy_stops_every_guest() {
    if !require_kvm() {
        return;
    }
    let capture = Capture::default();
    let text = [
        guest("bystander", "halt", "stop-guest"),
        guest("crasher", "panic", "stop-all"),
    ]
    .concat();
    let t = topology(&text);
    let waiter = {
        let vmm = compart_vmm::start(&t, capture.sink()).unwrap();
        std::thread::spawn(move || vmm.wait())
    };
    poll(BOOT, "the VMM to stop everything", || {
        waiter.is_finished().then_some(())
    });
    let outcome = waiter.join().unwrap();
    assert_eq!(outcome.state("bystander"), Some(&GuestState::Stopped));
    assert!(matches!(
        outcome.state("crasher"),
        Some(GuestState::Failed(Failure::Panic { .. }))
    ));
}

#[test]
fn a_guest_with_several_vcpus_boots_and_exits() {
    if !require_kvm() {
        return;
    }
    let capture = Capture::default();
    let t = topology(
        "[[guest]]\nname = \"wide\"\nrole = \"app\"\nimage = \"selftest\"\nvcpus = 4\ncmdline = \"exit=0\"\n",
    );
    let outcome = compart_vmm::start(&t, capture.sink()).unwrap().wait();
    assert_eq!(outcome.state("wide"), Some(&GuestState::Exited(0)));
    assert_eq!(outcome.exit_code(), 0);
}

#[test]
fn memory_too_small_for_image_stacks_and_heap_is_refused_before_anything_runs() {
    if !require_kvm() {
        return;
    }
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
