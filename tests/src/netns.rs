//! Network namespaces for tests: each test makes its own (`cpt-<tag>-<pid>`), puts
//! its TAPs or veth pairs in it, gives them addresses from 198.18.0.0/15 (the
//! benchmarking range, never routed), and the namespace with everything in it is
//! deleted when the [`NetNs`] drops. Nothing touches the host's own interfaces.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::process::Command;

/// A network namespace that this test created; deleted on drop.
#[derive(Debug)]
pub struct NetNs {
    name: String,
}

impl NetNs {
    /// Creates namespace `cpt-<tag>-<pid>` (with its loopback up). `tag` tells tests
    /// apart within one process.
    pub fn new(tag: &str) -> io::Result<NetNs> {
        let name = format!("cpt-{tag}-{}", std::process::id());
        // A stale one from a killed run of this very process id.
        let _ = Command::new("ip").args(["netns", "del", &name]).output();
        run(Command::new("ip").args(["netns", "add", &name]))?;
        let ns = NetNs { name };
        ns.ip(&["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// Its name, as `ip netns` and `/run/netns` know it.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Runs `ip -n NAME ARGS…`; an error carries ip's message.
    pub fn ip(&self, args: &[&str]) -> io::Result<()> {
        run(Command::new("ip").arg("-n").arg(&self.name).args(args))
    }

    /// Creates a veth pair inside the namespace (a stand-in for a host NIC), both
    /// ends up.
    pub fn add_veth(&self, a: &str, b: &str) -> io::Result<()> {
        self.ip(&["link", "add", a, "type", "veth", "peer", "name", b])?;
        self.ip(&["link", "set", a, "up"])?;
        self.ip(&["link", "set", b, "up"])
    }

    /// Runs `f` on a thread that has entered the namespace (sockets it opens live
    /// there), and returns what it returns.
    pub fn run_in<T: Send>(&self, f: impl FnOnce() -> T + Send) -> io::Result<T> {
        let file = File::open(format!("/run/netns/{}", self.name))?;
        std::thread::scope(|s| {
            s.spawn(move || {
                // SAFETY: setns with an open namespace file and CLONE_NEWNET changes
                // only this thread's network namespace; the thread ends after `f`.
                if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } < 0 {
                    return Err(io::Error::last_os_error());
                }
                Ok(f())
            })
            .join()
            .map_err(|_| io::Error::other("the thread in the namespace panicked"))?
        })
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        if let Err(e) = run(Command::new("ip").args(["netns", "del", &self.name])) {
            eprintln!("cannot delete network namespace {}: {e}", self.name);
        }
    }
}

/// Runs `cmd args…` inside namespace `ns` (`ip netns exec`); whether it succeeded, and
/// its standard output and error. Commands must bound themselves (`ping -c N -w S`).
pub fn exec_in(ns: &str, cmd: &str, args: &[&str]) -> (bool, String) {
    let out = Command::new("ip")
        .args(["netns", "exec", ns, cmd])
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd} in {ns}: {e}"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// `ping`'s "N received" count in its summary.
pub fn ping_received(ping_output: &str) -> u32 {
    ping_output
        .lines()
        .find_map(|l| {
            let (_, rest) = l.split_once(" packets transmitted, ")?;
            rest.split_whitespace().next()?.parse().ok()
        })
        .unwrap_or(0)
}

fn run(cmd: &mut Command) -> io::Result<()> {
    let out = cmd.output()?;
    if out.status.success() {
        Ok(())
    } else {
        Err(io::Error::other(format!(
            "{:?}: {}",
            cmd,
            String::from_utf8_lossy(&out.stderr).trim()
        )))
    }
}

/// Whether the network tests can run here: root with `ip` (iproute2) and
/// `/dev/net/tun`. They fail otherwise, unless `COMPART_SKIP_KVM_TESTS=1` (the same
/// switch as the KVM tests), so that a host without them is noticed.
pub fn require_netns() -> bool {
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    let ip = Command::new("ip").arg("-V").output().is_ok();
    let tun = std::path::Path::new("/dev/net/tun").exists();
    if root && ip && tun {
        return true;
    }
    let why = format!("root: {root}, ip: {ip}, /dev/net/tun: {tun}");
    if std::env::var(crate::SKIP_VAR).as_deref() == Ok("1") {
        eprintln!("skipping a network test ({why})");
        return false;
    }
    panic!(
        "network tests need root, iproute2 and /dev/net/tun ({why}); set {}=1 to skip",
        crate::SKIP_VAR
    )
}
