//! Channels between guests: a million requests and replies on dedicated cores, then
//! after a live move onto one shared core, then after moving back — nothing lost,
//! reordered or duplicated — and a guest whose peer is idle sleeps.

use std::time::Duration;

use compart_tests::{boot, cpu_share, kvm_test, poll, topology};
use compart_vmm::topology::HostCore;
use compart_vmm::{ControlRequest, GuestState};

const PHASE: Duration = Duration::from_secs(120);

fn pair(ping_cmdline: &str) -> String {
    pair_sized(ping_cmdline, 64, 64, 256)
}

fn pair_sized(ping_cmdline: &str, queue_depth: u32, max_outstanding: u32, buf_size: u32) -> String {
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
        queue_depth = {queue_depth}
        max_outstanding = {max_outstanding}
        buf_size = {buf_size}
        "#
    )
}

kvm_test! {
    fn a_million_round_trips_survive_live_moves_between_dedicated_and_shared_cores() {
        let t = topology(&pair("role=ping n=1000000 phases=3 window=64 payload=8"));
        let (vmm, capture) = boot(&t);
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
                .to_string()
        };
        capture.wait_for("ping", "phase 0 done", PHASE);
        assert_eq!(move_pong(0), "moved pong to host core(s) 0 (shared)");
        capture.wait_for("ping", "phase 1 done", PHASE);
        let status = control
            .request(ControlRequest::Status, Duration::from_secs(10))
            .unwrap()
            .to_string();
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
}

/// Runs the `pong` guest of `topology_text` against a quiet `ping` and returns the share
/// of a core its vCPU thread uses over 3 s.
fn idle_share(topology_text: &str) -> f64 {
    let t = topology(topology_text);
    let (vmm, capture) = boot(&t);
    capture.wait_for("ping", "channel 0 to pong open", Duration::from_secs(20));
    let threads = poll(Duration::from_secs(20), "two vCPU threads", || {
        let v = vmm.vcpu_threads();
        (v.len() == 2).then_some(v)
    });
    let pong = threads.iter().find(|t| t.guest == "pong").unwrap().tid;
    std::thread::sleep(Duration::from_millis(100));
    let share = cpu_share(pong, Duration::from_secs(3));
    vmm.handle().stop();
    vmm.wait();
    share
}

kvm_test! {
    fn a_guest_whose_peer_is_idle_uses_under_one_percent_of_a_core() {
        let share = idle_share(&pair("role=quiet"));
        eprintln!(
            "pong with an idle peer used {:.4} % of a core",
            share * 100.0
        );
        assert!(share < 0.01, "pong used {:.3} % of a core", share * 100.0);
    }
}

kvm_test! {
    fn a_guest_with_a_1_ms_timer_and_an_idle_peer_sleeps_between_ticks() {
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
}

kvm_test! {
    fn one_receive_loop_serves_all_of_a_guests_channels() {
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
        let (vmm, capture) = boot(&t);
        let outcome = vmm.wait();
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
}

kvm_test! {
    fn a_hostile_peer_breaks_only_its_own_channel() {
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
        let (vmm, capture) = boot(&t);
        let outcome = vmm.wait();
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
}

kvm_test! {
    fn three_misbehaving_peers_neither_stop_nor_slow_a_server_and_it_idles_after() {
        // One pong server; on the other core an honest peer and three that misbehave at once:
        // wrong requests, replies never taken, replies forged.
        let peer = |name: &str, cmdline: &str| {
            format!(
                "[[guest]]\nname = \"{name}\"\nrole = \"app\"\nimage = \"pingpong\"\ncores = [0]\n\
                 cmdline = \"{cmdline}\"\n\
                 [[channel]]\na = \"{name}\"\nb = \"server\"\nqueue_depth = 64\nmax_outstanding = 64\n"
            )
        };
        let t = topology(&format!(
            "[[guest]]\nname = \"server\"\nrole = \"ip\"\nimage = \"pingpong\"\ncores = [1]\n\
             cmdline = \"role=pong\"\n{}{}{}{}",
            peer("liar", "role=liar n=3000 to=server"),
            peer("hog", "role=hog"),
            peer("forger", "role=forger n=100000"),
            peer(
                "honest",
                "role=ping n=1000000 window=64 payload=16 to-role=ip"
            ),
        ));
        let (vmm, capture) = boot(&t);
        let done = Duration::from_secs(60);
        capture.wait_for(
            "honest",
            "ping: 1000000 round trips, none lost, reordered or duplicated",
            done,
        );
        for (guest, line) in [
            (
                "liar",
                "liar: 3000 wrong requests, each refused for its reason",
            ),
            ("forger", "forger: 100000 forged replies"),
            (
                "hog",
                "hog: 64 requests sent and 64 again; never taking a reply",
            ),
            (
                "server",
                "to honest closed (done): 1000000 served, 0 refused, 0 stale and 0 unexpected replies",
            ),
            (
                "server",
                "to liar closed (done): 0 served, 3000 refused, 0 stale and 0 unexpected replies",
            ),
            (
                "server",
                "to forger closed (done): 0 served, 0 refused, 100000 stale and 0 unexpected replies",
            ),
            ("server", "to hog throttled: its reply queue is full"),
        ] {
            capture.wait_for(guest, line, done);
        }
        // Only the hog is left, throttled: the server must sleep, not spin on its queue.
        let server = vmm
            .vcpu_threads()
            .into_iter()
            .find(|t| t.guest == "server")
            .unwrap()
            .tid;
        std::thread::sleep(Duration::from_millis(100));
        let share = cpu_share(server, Duration::from_secs(1));
        eprintln!(
            "the server used {:.4} % of a core after its honest peer stopped",
            share * 100.0
        );
        assert!(
            share < 0.01,
            "the server used {:.3} % of a core",
            share * 100.0
        );
        vmm.handle().stop();
        let outcome = vmm.wait();
        for g in ["liar", "forger", "honest"] {
            assert_eq!(
                outcome.state(g),
                Some(&GuestState::Exited(0)),
                "{g}: {outcome:?}"
            );
        }
        for g in ["server", "hog"] {
            assert_eq!(
                outcome.state(g),
                Some(&GuestState::Stopped),
                "{g}: {outcome:?}"
            );
        }
    }
}

kvm_test! {
    /// The network stack's data channels carry 64 KiB segments: 128 of them in flight in a
    /// 16 MiB region, each written in place by ping and rewritten in place by pong.
    fn segments_of_64_kib_make_the_round_trip_between_guests_intact() {
        let t = topology(&pair_sized(
            "role=ping n=3000 window=128 payload=65600",
            256,
            128,
            65600,
        ));
        let (vmm, capture) = boot(&t);
        let outcome = vmm.wait();
        for g in ["ping", "pong"] {
            assert_eq!(
                outcome.state(g),
                Some(&GuestState::Exited(0)),
                "{g}: {outcome:?} {:?}",
                capture.of(g)
            );
        }
        let ping = capture.of("ping");
        assert!(
            ping.iter()
                .any(|l| l.starts_with("ping: phase 0 done: 3000 round trips")),
            "{ping:?}"
        );
        assert!(
            ping.contains(&"ping: 3000 round trips, none lost, reordered or duplicated".to_string()),
            "{ping:?}"
        );
    }
}
