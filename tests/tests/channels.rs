//! Channels between guests: a million requests and replies on dedicated cores, then
//! after a live move onto one shared core, then after moving back — nothing lost,
//! reordered or duplicated — and a guest whose peer is idle sleeps.

use std::time::Duration;

use compart_tests::{poll, require_kvm, thread_cpu_ns, topology, Capture};
use compart_vmm::topology::HostCore;
use compart_vmm::{ControlRequest, GuestState};

const PHASE: Duration = Duration::from_secs(120);

fn pair(ping_cmdline: &str) -> String {
    format!(
        r#"
        [[guest]]
        name = "ping"
        role = "app"
        image = "pingpong"
        cores = [0]
        cmdline = "{ping_cmdline}"

        [[guest]]
        name = "pong"
        role = "app"
        image = "pingpong"
        cores = [1]
        cmdline = "role=pong"

        [[channel]]
        a = "ping"
        b = "pong"
        queue_depth = 64
        max_outstanding = 64
        buf_size = 256
        "#
    )
}

#[test]
fn a_million_round_trips_survive_live_moves_between_dedicated_and_shared_cores() {
    if !require_kvm() {
        return;
    }
    let t = topology(&pair("role=ping n=1000000 phases=3 window=64 payload=8"));
    let capture = Capture::default();
    let vmm = compart_vmm::start(&t, capture.sink()).unwrap();
    let control = vmm.handle();
    let waiter = std::thread::spawn(move || vmm.wait());

    let move_pong = |core: u32| {
        control
            .request(
                ControlRequest::Move {
                    guest: "pong".into(),
                    cores: vec![HostCore(core)],
                },
                Duration::from_secs(10),
            )
            .unwrap()
    };
    capture.wait_for("ping", "phase 0 done", PHASE);
    assert_eq!(move_pong(0), "moved pong to host core(s) 0 (shared)");
    capture.wait_for("ping", "phase 1 done", PHASE);
    let status = control
        .request(ControlRequest::Status, Duration::from_secs(10))
        .unwrap();
    assert!(status.contains("cores 0 shared"), "{status}");
    assert_eq!(move_pong(1), "moved pong to host core(s) 1 (dedicated)");
    capture.wait_for("ping", "phase 2 done", PHASE);

    let outcome = waiter.join().unwrap();
    assert_eq!(
        outcome.state("ping"),
        Some(&GuestState::Exited(0)),
        "{outcome:?}"
    );
    assert_eq!(
        outcome.state("pong"),
        Some(&GuestState::Exited(0)),
        "{outcome:?}"
    );
    let ping = capture.of("ping");
    let phase = |p: usize| {
        ping.iter()
            .find(|l| l.starts_with(&format!("ping: phase {p} done: 1000000 round trips")))
            .unwrap_or_else(|| panic!("phase {p} missing: {ping:?}"))
            .clone()
    };
    assert!(
        phase(0).contains(" dedicated on core(s) Some(0)"),
        "{}",
        phase(0)
    );
    assert!(
        phase(1).contains(" shared on core(s) Some(0)"),
        "{}",
        phase(1)
    );
    assert!(
        phase(2).contains(" dedicated on core(s) Some(0)"),
        "{}",
        phase(2)
    );
    assert!(
        ping.contains(&"ping: 3000000 round trips, none lost, reordered or duplicated".to_string()),
        "{ping:?}"
    );
    assert!(capture
        .of("pong")
        .contains(&"pong: stop after 3000000 requests on 1 channel(s), 0 broken".to_string()));
}

/// Runs `waiter` (the `pong` guest of `topology`) against a quiet peer and returns
/// the share of a core its vCPU thread uses over 3 s.
fn idle_share(topology_text: &str) -> f64 {
    let t = topology(topology_text);
    let capture = Capture::default();
    let vmm = compart_vmm::start(&t, capture.sink()).unwrap();
    capture.wait_for("ping", "channel 0 to pong open", Duration::from_secs(20));
    let threads = poll(Duration::from_secs(20), "two vCPU threads", || {
        let v = vmm.vcpu_threads();
        (v.len() == 2).then_some(v)
    });
    let pong = threads.iter().find(|t| t.guest == "pong").unwrap().tid;
    std::thread::sleep(Duration::from_millis(100));
    let before = thread_cpu_ns(pong);
    let window = Duration::from_secs(3);
    std::thread::sleep(window);
    let share = (thread_cpu_ns(pong) - before) as f64 / window.as_nanos() as f64;
    vmm.handle().stop();
    vmm.wait();
    share
}

#[test]
fn a_guest_whose_peer_is_idle_uses_under_one_percent_of_a_core() {
    if !require_kvm() {
        return;
    }
    let share = idle_share(&pair("role=quiet"));
    eprintln!(
        "pong with an idle peer used {:.4} % of a core",
        share * 100.0
    );
    assert!(share < 0.01, "pong used {:.3} % of a core", share * 100.0);
}

#[test]
fn a_guest_with_a_1_ms_timer_and_an_idle_peer_sleeps_between_ticks() {
    if !require_kvm() {
        return;
    }
    // The same pair, but pong waits on its channel with a deadline every millisecond
    // (selftest tick=1000) on its dedicated core. After a tick with no work it must
    // sleep at once, not poll for the placement's 1 ms budget (which would keep the
    // core busy all the time). Each timer wake-up costs this nested host ≈ 55 µs of
    // vCPU thread time (≈ 5.5 % of a core at 1 ms; 0.55 % at 10 ms), so the bound
    // leaves room for a loaded machine.
    let text = pair("role=quiet").replace(
        "image = \"pingpong\"\n        cores = [1]\n        cmdline = \"role=pong\"",
        "image = \"selftest\"\n        cores = [1]\n        cmdline = \"tick=1000\"",
    );
    assert!(text.contains("tick=1000"), "{text}");
    let share = idle_share(&text);
    eprintln!(
        "a guest with a 1 ms timer and an idle peer used {:.4} % of a core",
        share * 100.0
    );
    assert!(share < 0.15, "it used {:.3} % of a core", share * 100.0);
}

#[test]
fn one_receive_loop_serves_all_of_a_guests_channels() {
    if !require_kvm() {
        return;
    }
    let ping = |name: &str, core: u32| {
        format!(
            "[[guest]]\nname = \"{name}\"\nrole = \"app\"\nimage = \"pingpong\"\ncores = [{core}]\n\
             cmdline = \"role=ping n=100000 window=8 payload=32\"\n\
             [[channel]]\na = \"{name}\"\nb = \"server\"\n"
        )
    };
    let t = topology(&format!(
        "[[guest]]\nname = \"server\"\nrole = \"app\"\nimage = \"pingpong\"\ncores = [1]\ncmdline = \"role=pong\"\n{}{}",
        ping("left", 0),
        ping("right", 0)
    ));
    let capture = Capture::default();
    let outcome = compart_vmm::start(&t, capture.sink()).unwrap().wait();
    for g in ["server", "left", "right"] {
        assert_eq!(
            outcome.state(g),
            Some(&GuestState::Exited(0)),
            "{g}: {outcome:?}"
        );
    }
    assert!(
        capture
            .of("server")
            .contains(&"pong: stop after 200000 requests on 2 channel(s), 0 broken".to_string()),
        "{:?}",
        capture.of("server")
    );
    for g in ["left", "right"] {
        assert!(capture
            .of(g)
            .contains(&"ping: 100000 round trips, none lost, reordered or duplicated".to_string()));
    }
}

#[test]
fn a_hostile_peer_breaks_only_its_own_channel() {
    if !require_kvm() {
        return;
    }
    let t = topology(
        r#"
        [[guest]]
        name = "server"
        role = "app"
        image = "pingpong"
        cores = [1]
        cmdline = "role=pong"

        [[guest]]
        name = "vandal"
        role = "app"
        image = "pingpong"
        cores = [0]
        cmdline = "role=vandal"

        [[guest]]
        name = "honest"
        role = "app"
        image = "pingpong"
        cores = [0]
        cmdline = "role=ping n=100000 window=8 payload=16"

        [[channel]]
        a = "vandal"
        b = "server"

        [[channel]]
        a = "honest"
        b = "server"
        "#,
    );
    let capture = Capture::default();
    let outcome = compart_vmm::start(&t, capture.sink()).unwrap().wait();
    for g in ["server", "vandal", "honest"] {
        assert_eq!(
            outcome.state(g),
            Some(&GuestState::Exited(0)),
            "{g}: {outcome:?}"
        );
    }
    let server = capture.of("server");
    assert!(
        server
            .iter()
            .any(|l| l.starts_with("pong: channel 0 to vandal broken: ")),
        "{server:?}"
    );
    assert!(
        server.contains(&"pong: stop after 100001 requests on 2 channel(s), 1 broken".to_string()),
        "{server:?}"
    );
    assert!(capture
        .of("honest")
        .contains(&"ping: 100000 round trips, none lost, reordered or duplicated".to_string()));
}
