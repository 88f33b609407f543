//! The platform's P-state limit, `_PPC`, at start and live: the guest's firmware
//! driver requests its state within the limit through PERF_CTL at boot, and again
//! when the VMM lowers or raises the limit and notifies it (`ctl pstate --ppc`); the
//! VMM never changes the state behind the guest's back. No timing is measured.

use std::time::Duration;

use compart_tests::{boot, kvm_test, poll, topology, Capture};
use compart_vmm::control::{PStateReport, VcpuStatus};
use compart_vmm::{
    ControlError, ControlRequest, ControlResponse, GuestState, RunningVmm, VmmHandle,
};

const BOOT: Duration = Duration::from_secs(20);

const LADDER: &str = r#"
[pstates]
backend = "soft"
ladder = [
    { mhz = 2000, power_mw = 8000 },
    { mhz = 1800, power_mw = 6000 },
    { mhz = 1600, power_mw = 4500 },
    { mhz = 1400, power_mw = 3000 },
    { mhz = 1200, power_mw = 2000 },
]
"#;

fn one_guest(name: &str, cmdline: &str, keys: &str) -> compart_vmm::Topology {
    topology(&format!(
        "{LADDER}[[guest]]\nname = \"{name}\"\nrole = \"app\"\nimage = \"selftest\"\n\
         cmdline = \"{cmdline}\"\n{keys}"
    ))
}

/// Runs `request` on another thread while this one coordinates the VMM (so that it
/// stays ours to inspect).
fn control<T: Send + 'static>(
    vmm: &mut RunningVmm,
    request: impl FnOnce(&VmmHandle) -> T + Send + 'static,
) -> T {
    let handle = vmm.handle();
    let waiter = std::thread::spawn(move || request(&handle));
    poll(BOOT, "the control request", || {
        vmm.serve_pending();
        waiter.is_finished().then_some(())
    });
    waiter.join().unwrap()
}

fn set_ppc(vmm: &mut RunningVmm, guest: &str, ppc: usize) -> Result<PStateReport, ControlError> {
    let guest = guest.to_string();
    control(vmm, move |h| h.set_ppc(&guest, ppc))
}

fn vcpu0(vmm: &mut RunningVmm) -> VcpuStatus {
    match control(vmm, |h| h.request(ControlRequest::Status, BOOT)).unwrap() {
        ControlResponse::Status(s) => s.guests[0].vcpus[0].clone(),
        other => panic!("not a status report: {other:?}"),
    }
}

/// The guest's driver reports `line` (a `pstate: ` line) on its console.
fn said(capture: &Capture, guest: &str, line: &str) {
    capture.wait_until(BOOT, &format!("[{guest}] {line}"), |lines| {
        lines.iter().any(|l| l.guest == guest && l.text == line)
    });
}

fn lines(capture: &Capture, guest: &str, prefix: &str) -> Vec<String> {
    capture
        .of(guest)
        .into_iter()
        .filter(|l| l.starts_with(prefix))
        .collect()
}

kvm_test! {
    fn lowering_and_raising_ppc_live_makes_the_guest_request_the_new_state() {
        let t = one_guest("limited", "halt", "");
        let (mut vmm, capture) = boot(&t);
        said(&capture, "limited", "pstate: _PPC P0 at boot, started in P0: requested P0, accepted, now P0");

        let r = set_ppc(&mut vmm, "limited", 3).unwrap();
        assert_eq!(r.ppc, 3);
        assert_eq!((r.vcpus[0].requested, r.vcpus[0].pstate, r.vcpus[0].mhz), (3, 3, 1400), "{r}");
        assert!(r.followed(), "{r}");
        said(&capture, "limited", "pstate: _PPC now P3: requested P3, accepted, now P3");
        let v = vcpu0(&mut vmm);
        assert_eq!((v.ppc, v.requested, v.pstate, v.mhz), (3, 3, 3, 1400), "{v:?}");

        let r = set_ppc(&mut vmm, "limited", 0).unwrap();
        assert_eq!((r.ppc, r.vcpus[0].requested, r.vcpus[0].pstate), (0, 0, 0), "{r}");
        said(&capture, "limited", "pstate: _PPC now P0: requested P0, accepted, now P0");
        let v = vcpu0(&mut vmm);
        assert_eq!((v.ppc, v.requested, v.pstate), (0, 0, 0), "{v:?}");

        // The same limit again: nothing to notify, the answer comes at once.
        let before = lines(&capture, "limited", "pstate: ").len();
        let r = set_ppc(&mut vmm, "limited", 0).unwrap();
        assert!(r.followed() && r.vcpus[0].pstate == 0, "{r}");

        // Out of range, or nobody: clear errors, and nothing changes.
        match set_ppc(&mut vmm, "limited", 5) {
            Err(ControlError::InvalidPState { reason }) => assert_eq!(
                reason,
                "guest limited: _PPC 5 is out of range: the guest's _PSS has P0 to P4"
            ),
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            set_ppc(&mut vmm, "nobody", 1),
            Err(ControlError::NoSuchGuest { .. })
        ));
        let v = vcpu0(&mut vmm);
        assert_eq!((v.ppc, v.pstate), (0, 0), "{v:?}");
        assert_eq!(lines(&capture, "limited", "pstate: ").len(), before, "no notification");
        vmm.handle().stop();
        vmm.wait();
    }
}

kvm_test! {
    fn the_start_limit_and_state_are_the_drivers_and_a_chosen_slower_state_survives_raising() {
        // Started in P3 under _PPC P1: P3 is the guest's state, raising the limit keeps it.
        let t = one_guest("slow", "halt", "ppc = 1\npstate = 3\n");
        let (mut vmm, capture) = boot(&t);
        said(&capture, "slow", "pstate: _PPC P1 at boot, started in P3: requested P3, accepted, now P3");
        let v = vcpu0(&mut vmm);
        assert_eq!((v.ppc, v.requested, v.pstate), (1, 3, 3), "{v:?}");
        let status = match control(&mut vmm, |h| h.request(ControlRequest::Status, BOOT)).unwrap() {
            ControlResponse::Status(s) => s.to_string(),
            other => panic!("{other:?}"),
        };
        assert!(status.contains(" P3 1400 MHz (soft; requested P3, _PPC P1) "), "{status}");

        let r = set_ppc(&mut vmm, "slow", 4).unwrap();
        assert_eq!((r.vcpus[0].requested, r.vcpus[0].pstate), (4, 4), "{r}");
        said(&capture, "slow", "pstate: _PPC now P4: requested P4, accepted, now P4");
        let r = set_ppc(&mut vmm, "slow", 0).unwrap();
        assert_eq!((r.vcpus[0].requested, r.vcpus[0].pstate), (3, 3), "{r}");
        said(&capture, "slow", "pstate: _PPC now P0: requested P3, accepted, now P3");
        vmm.handle().stop();
        vmm.wait();

        // Started at the limit (pstate = 0 clamped to _PPC P2): as fast as allowed, so
        // raising the limit speeds it up.
        let t = one_guest("capped", "halt", "ppc = 2\n");
        let (mut vmm, capture) = boot(&t);
        said(&capture, "capped", "pstate: _PPC P2 at boot, started in P2: requested P2, accepted, now P2");
        let r = set_ppc(&mut vmm, "capped", 1).unwrap();
        assert_eq!((r.vcpus[0].requested, r.vcpus[0].pstate), (1, 1), "{r}");
        said(&capture, "capped", "pstate: _PPC now P1: requested P1, accepted, now P1");
        vmm.handle().stop();
        vmm.wait();
    }
}

kvm_test! {
    fn a_guest_that_does_not_wait_is_reported_and_follows_once_it_halts() {
        // It computes for 8 s without halting: the VMM's 2 s wait ends first.
        let t = one_guest("busy", "spin=8000 halt", "");
        let (mut vmm, capture) = boot(&t);
        said(&capture, "busy", "spin: 8000 ms without halting");
        match set_ppc(&mut vmm, "busy", 2) {
            Err(ControlError::PpcNotFollowed { guest, ppc, vcpus, .. }) => {
                assert_eq!((guest.as_str(), ppc), ("busy", 2));
                assert!(vcpus.contains("vCPU 0 requests P0, runs at P0"), "{vcpus}");
            }
            other => panic!("{other:?}"),
        }
        // The limit stands; the state is still the guest's until it requests one.
        let v = vcpu0(&mut vmm);
        assert_eq!((v.ppc, v.pstate), (2, 0), "{v:?}");
        said(&capture, "busy", "spin: done");
        said(&capture, "busy", "pstate: _PPC now P2: requested P2, accepted, now P2");
        poll(BOOT, "the guest's request", || {
            let v = vcpu0(&mut vmm);
            (v.pstate == 2).then_some(())
        });
        vmm.handle().stop();
        vmm.wait();
    }
}

kvm_test! {
    fn servers_under_traffic_follow_a_new_limit_from_their_channel_wait() {
        // A ping-pong pair exchanging round trips without pause: both wait on their
        // channel (poll, then halt) and follow the limit there, with no code of their own.
        let t = topology(&format!(
            "{LADDER}
            [[guest]]
            name = \"ping\"
            role = \"app\"
            image = \"pingpong\"
            cores = [0]
            cmdline = \"role=ping n=100000000 phases=1 window=64 payload=8\"

            [[guest]]
            name = \"pong\"
            role = \"app\"
            image = \"pingpong\"
            cores = [1]
            cmdline = \"role=pong\"

            [[channel]]
            a = \"ping\"
            b = \"pong\"
            "
        ));
        let (vmm, capture) = boot(&t);
        let control = vmm.handle();
        let waiter = std::thread::spawn(move || vmm.wait());
        for g in ["ping", "pong"] {
            said(&capture, g, "pstate: _PPC P0 at boot, started in P0: requested P0, accepted, now P0");
        }
        let served = || match control.request(ControlRequest::Status, BOOT).unwrap() {
            ControlResponse::Status(s) => s.guests[1].channels[0].totals.requests_received,
            other => panic!("{other:?}"),
        };
        for (ppc, mhz) in [(4, 1200), (2, 1600), (0, 2000)] {
            for g in ["pong", "ping"] {
                let r = control.set_ppc(g, ppc).unwrap();
                assert_eq!((r.vcpus[0].requested, r.vcpus[0].pstate, r.vcpus[0].mhz), (ppc, ppc, mhz), "{r}");
                said(&capture, g, &format!("pstate: _PPC now P{ppc}: requested P{ppc}, accepted, now P{ppc}"));
            }
            let before = served();
            poll(BOOT, "more round trips at the new state", || (served() > before).then_some(()));
        }
        control.stop();
        let outcome = waiter.join().unwrap();
        for g in ["ping", "pong"] {
            assert!(
                matches!(outcome.state(g), Some(GuestState::Stopped | GuestState::Exited(0))),
                "{outcome:?}"
            );
        }
    }
}
