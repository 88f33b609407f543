//! Guests boot under KVM, run in ring 3, report to the console, and end — with their
//! failures reported by name and reason while the VMM and other guests carry on.

use std::time::Duration;

use compart_tests::{
    default_topology, poll, require_kvm, thread_affinity, thread_cpu_ns, topology, Capture,
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
    match outcome.state("tripler") {
        Some(GuestState::Failed(Failure {
            kind: FailureKind::TripleFault,
            rip: Some(rip),
        })) => assert!(*rip >= 0x20_0000),
        other => panic!("tripler: {other:?}"),
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
        Some(GuestState::Failed(f)) if f.is_panic()
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

#[test]
fn an_image_built_with_a_proc_macro_runs() {
    if !require_kvm() {
        return;
    }
    // The `derive` image serialises a struct with serde's derive (a proc macro, built for
    // the host while the image is built for the guest) and parses it back.
    let capture = Capture::default();
    let t = topology(
        "[[guest]]\nname = \"json\"\nrole = \"tcp\"\nimage = \"derive\"\ncmdline = \"a b=c\"\n",
    );
    let outcome = compart_vmm::start(&t, capture.sink()).unwrap().wait();
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

#[test]
fn after_a_live_move_thread_info_reports_the_new_cores() {
    if !require_kvm() {
        return;
    }
    let capture = Capture::default();
    let t = topology(&format!(
        "{}cores = [0]\n",
        guest("mover", "halt", "stop-all")
    ));
    let vmm = compart_vmm::start(&t, capture.sink()).unwrap();
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

#[test]
fn a_vmm_dropped_without_waiting_stops_and_joins_its_vcpu_threads() {
    if !require_kvm() {
        return;
    }
    let capture = Capture::default();
    let t = topology(&guest("sleeper", "halt", "stop-all"));
    let vmm = compart_vmm::start(&t, capture.sink()).unwrap();
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
