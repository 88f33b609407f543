//! The `compart` command as a user runs it: exit status, signals, validation output.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use compart_tests::kvm_test;

const BIN: &str = env!("CARGO_BIN_EXE_compart");

fn write_topology(dir: &Path, text: &str) -> PathBuf {
    let p = dir.join("t.toml");
    std::fs::write(&p, text).unwrap();
    p
}

kvm_test! {
    fn run_exits_with_the_guest_exit_status() {
        let dir = tempfile::tempdir().unwrap();
        let t = write_topology(
            dir.path(),
            "[[guest]]\nname = \"solo\"\nrole = \"app\"\nimage = \"selftest\"\ncmdline = \"exit=42\"\n",
        );
        let out = Command::new(BIN).arg("run").arg(&t).output().unwrap();
        assert_eq!(out.status.code(), Some(42), "{out:?}");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            stdout.contains("[solo] hello from solo (app), exiting with 42"),
            "{stdout}"
        );
    }
}

kvm_test! {
    fn sigterm_stops_the_idle_topology_cleanly() {
        let idle = Path::new(env!("CARGO_MANIFEST_DIR")).join("../topologies/idle.toml");
        let mut child = Command::new(BIN)
            .arg("run")
            .arg(idle)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let mut up = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(20);
        while up.len() < 5 && Instant::now() < deadline {
            match lines.next() {
                Some(Ok(l)) if l.contains(" up: ") => up.push(l),
                Some(_) => {}
                None => break,
            }
        }
        assert_eq!(up.len(), 5, "five guests report: {up:?}");
        for role in ["driver", "ip", "pf", "tcp", "posix"] {
            assert!(
                up.iter()
                    .any(|l| l.starts_with(&format!("[{role}] role {role} up"))),
                "{up:?}"
            );
        }
        // SAFETY: sending SIGTERM to our own child.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        let status = wait_exit(&mut child, "SIGTERM");
        assert_eq!(status.code(), Some(0));
    }
}

/// Waits up to 10 s for `child` to exit after `what`; kills it and fails otherwise.
fn wait_exit(child: &mut std::process::Child, what: &str) -> std::process::ExitStatus {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(s) = child.try_wait().unwrap() {
            return s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("compart did not stop within 10 s of {what}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn validate_names_every_problem_by_key_path() {
    let dir = tempfile::tempdir().unwrap();
    let t = write_topology(
        dir.path(),
        "[[guest]]\nname = \"a\"\nrole = \"ip\"\nimage = \"idle\"\ncores = [99]\n\
         [[guest]]\nname = \"a\"\nrole = \"pf\"\nimage = \"nope\"\n",
    );
    let out = Command::new(BIN).arg("validate").arg(&t).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("guest[0] (a).cores: core 99 is not online on this host"),
        "{err}"
    );
    assert!(
        err.contains("guest[1] (a).name: duplicate guest name `a`"),
        "{err}"
    );
    assert!(
        err.contains("guest[1] (a).image: unknown image `nope`"),
        "{err}"
    );
}

#[test]
fn validate_accepts_the_default_topology() {
    let default = Path::new(env!("CARGO_MANIFEST_DIR")).join("../topologies/default.toml");
    let out = Command::new(BIN)
        .arg("validate")
        .arg(default)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("valid"), "{stdout}");
    assert_eq!(
        stdout.lines().filter(|l| l.starts_with("guest ")).count(),
        7,
        "{stdout}"
    );
}

#[test]
fn a_missing_topology_file_is_reported() {
    let out = Command::new(BIN)
        .args(["run", "/no/such/topology.toml"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("cannot read topology file /no/such/topology.toml"),
        "{err}"
    );
}

#[test]
fn acpi_dump_writes_tables_acpica_evaluates_to_the_topology() {
    let tools = ["iasl", "acpiexec"]
        .iter()
        .all(|t| Command::new(t).arg("-v").output().is_ok());
    if !tools {
        if std::env::var("COMPART_SKIP_ACPICA_TESTS").as_deref() == Ok("1") {
            return;
        }
        panic!("iasl/acpiexec missing: install acpica-tools (apt-get install acpica-tools)");
    }
    let dir = tempfile::tempdir().unwrap();
    let t = write_topology(
        dir.path(),
        "[pstates]\ncoordination = \"sw-all\"\nladder = [{ mhz = 2400, power_mw = 9000 }, { mhz = 1200, power_mw = 2500 }]\n\
         [[guest]]\nname = \"g\"\nrole = \"tcp\"\nimage = \"idle\"\nvcpus = 2\nvcpu_cores = [[0], [0]]\nppc = 1\n",
    );
    let out_dir = dir.path().join("tables");
    let out = Command::new(BIN)
        .args(["acpi", "dump"])
        .arg(&t)
        .args(["--guest", "g", "--out"])
        .arg(&out_dir)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    for f in ["rsdp.dat", "xsdt.dat", "facp.dat", "apic.dat", "dsdt.dat"] {
        assert!(out_dir.join(f).is_file(), "{f} written");
    }
    let exec = Command::new("acpiexec")
        .current_dir(&out_dir)
        .args([
            "-b",
            "evaluate \\_SB.C001._PSS; evaluate \\_SB.C001._PPC; evaluate \\_SB.C001._PSD",
            "dsdt.dat",
            "facp.dat",
            "apic.dat",
        ])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&exec.stdout).to_lowercase();
    for want in [
        "0000000000000960", // 2400 MHz
        "0000000000002328", // 9000 mW
        "00000000000004b0", // 1200 MHz
        "00000000000009c4", // 2500 mW
        "00000000000000fc", // SW_ALL
    ] {
        assert!(text.contains(want), "acpiexec output lacks {want}:\n{text}");
    }
}

kvm_test! {
    fn ctl_moves_reports_and_stops_a_running_vmm() {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("ctl.sock");
        let idle = Path::new(env!("CARGO_MANIFEST_DIR")).join("../topologies/idle.toml");
        let mut child = Command::new(BIN)
            .arg("run")
            .arg(idle)
            .arg("--control")
            .arg(&sock)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let ctl = |args: &[&str]| {
            let out = Command::new(BIN)
                .arg("ctl")
                .arg(&sock)
                .args(args)
                .output()
                .unwrap();
            (
                out.status.code(),
                String::from_utf8_lossy(&out.stdout).into_owned(),
                String::from_utf8_lossy(&out.stderr).into_owned(),
            )
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while !sock.exists() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        let (code, status, _) = ctl(&["status"]);
        assert_eq!(code, Some(0));
        assert_eq!(
            status.lines().filter(|l| l.starts_with("guest ")).count(),
            5,
            "{status}"
        );
            assert!(status.contains("guest tcp (tcp): running"), "{status}");

        let (code, json, _) = ctl(&["status", "--json"]);
        assert_eq!(code, Some(0));
        assert!(json.trim_start().starts_with('{'), "{json}");
        assert!(json.contains("\"name\": \"tcp\""), "{json}");
        assert!(json.contains("\"state\": \"running\""), "{json}");
        assert!(json.contains("\"refused_msr_writes\": 0"), "{json}");

        let (code, moved, _) = ctl(&["move", "tcp", "--cores", "0"]);
        assert_eq!(code, Some(0));
        assert_eq!(moved.trim(), "moved tcp to host core(s) 0 (shared)");
        let (_, status, _) = ctl(&["status"]);
        let tcp = status
            .lines()
            .skip_while(|l| !l.starts_with("guest tcp"))
            .nth(1)
            .unwrap();
        assert!(tcp.contains(" cores 0 shared "), "{tcp}");

        let (code, _, err) = ctl(&["move", "nobody", "--cores", "0"]);
        assert_eq!(code, Some(1));
        assert!(err.contains("no guest named `nobody`"), "{err}");

        let (code, _, _) = ctl(&["stop"]);
        assert_eq!(code, Some(0));
        let status = wait_exit(&mut child, "`ctl stop`");
        assert_eq!(status.code(), Some(0));
        assert!(!sock.exists(), "the control socket is removed on exit");
    }
}

kvm_test! {
    fn run_on_the_default_topology_says_where_the_stack_is_and_the_hint_works() {
        if !compart_tests::netns::require_netns() {
            return;
        }
        // The shipped file with this process's namespace and TAP, so that it never
        // meets a running `compart run topologies/default.toml`.
        let pid = std::process::id() % 100_000;
        let (ns, tap) = (format!("cpt-run-{pid}"), format!("crun{pid}"));
        let shipped = include_str!("../../topologies/default.toml");
        let dir = tempfile::tempdir().unwrap();
        let t = write_topology(
            dir.path(),
            &shipped
                .replace("netns = \"compart\"", &format!("netns = \"{ns}\""))
                .replace("tap = \"compart0\"", &format!("tap = \"{tap}\"")),
        );
        let mut child = Command::new(BIN)
            .arg("run")
            .arg(&t)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let err = BufReader::new(child.stderr.take().unwrap());
        std::thread::spawn(move || {
            for l in err.lines().map_while(Result::ok) {
                let _ = tx.send(l);
            }
        });
        let out = BufReader::new(child.stdout.take().unwrap());
        let (up_tx, up_rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for l in out.lines().map_while(Result::ok) {
                if l.starts_with("[http] http: serving on port 80") {
                    let _ = up_tx.send(());
                }
            }
        });
        let want = format!(
            "compart: the stack is at 198.18.0.2 (netns {ns}) — try: ip netns exec {ns} curl \
             http://198.18.0.2/status; ip netns exec {ns} iperf3 -c 198.18.0.2"
        );
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut seen = Vec::new();
        while !seen.contains(&want) {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(l) => seen.push(l),
                Err(_) => panic!("no line `{want}` in: {seen:#?}"),
            }
        }
        up_rx.recv_timeout(Duration::from_secs(30)).expect("http listens");
        // The hints, as a user types them (bounded by timeout).
        let hint = want.split("try: ").nth(1).unwrap();
        let (curl, iperf3) = hint.split_once("; ").unwrap();
        let run = |cmd: &str, more: &[&str]| {
            let out = Command::new("timeout")
                .arg("30")
                .args(cmd.split_whitespace())
                .args(more)
                .output()
                .unwrap();
            assert!(out.status.success(), "{cmd}: {out:?}");
            String::from_utf8_lossy(&out.stdout).into_owned()
        };
        let page = run(curl, &["--max-time", "20"]);
        assert!(page.starts_with("compart http server\n"), "{page}");
        let report = run(iperf3, &["-t", "2"]);
        assert!(report.contains(" receiver"), "{report}");
        // SAFETY: sending SIGTERM to our own child.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        let status = wait_exit(&mut child, "SIGTERM");
        assert_eq!(status.code(), Some(0));
        assert!(
            !Path::new("/run/netns").join(&ns).exists(),
            "compart deletes the namespace it created"
        );
    }
}
