//! Topologies of the network stack for tests: its servers bottom first (the `driver`
//! that runs the NIC, `ip`, optionally `pf`, `tcp` and `posix`), each a guest whose
//! name, role and image are the same, joined to the next by a channel for 64 KiB
//! segments, then applications (role `app`, [`Server::app`]) each joined to the last
//! server before them (posix), and the NIC under the driver given by its own keys.

use std::fmt::Write as _;

/// One server of a test stack: its name (also its image), role, RAM, the host core it
/// runs on, and its command line.
#[derive(Debug, Clone, Copy)]
pub struct Server<'a> {
    /// Name and image.
    pub name: &'a str,
    /// Its role: its name, or `app` for an application.
    pub role: &'a str,
    /// Guest RAM in MiB.
    pub memory_mib: u32,
    /// The host core of its vCPU.
    pub core: u32,
    /// Its command line.
    pub cmdline: &'a str,
}

impl<'a> Server<'a> {
    /// Server `name` (also its role) with `memory_mib` of RAM on host core `core`.
    pub const fn new(name: &'a str, memory_mib: u32, core: u32) -> Server<'a> {
        Server {
            name,
            role: name,
            memory_mib,
            core,
            cmdline: "",
        }
    }

    /// The same with command line `cmdline`.
    pub const fn with(self, cmdline: &'a str) -> Server<'a> {
        Server { cmdline, ..self }
    }

    /// Application `name` (image `name`, role `app`) with `memory_mib` of RAM on host
    /// core `core`: joined to the last server before it rather than to the next one.
    pub const fn app(name: &'a str, memory_mib: u32, core: u32) -> Server<'a> {
        Server {
            role: "app",
            ..Server::new(name, memory_mib, core)
        }
    }

    fn is_app(&self) -> bool {
        self.role == "app"
    }
}

/// The driver on core 0 and ip on core 1, as every stack test starts.
pub const DRIVER: Server<'static> = Server::new("driver", 16, 0);
/// See [`DRIVER`].
pub const IP: Server<'static> = Server::new("ip", 16, 1);

/// The topology text of `servers` (bottom first; the first drives the NIC) on host
/// cores 0 and 1, each joined by a channel of 64-slot queues, 16 requests in flight and
/// 65 600-byte buffers (a 64 KiB segment with its headers) to the server before it (an
/// application to the last server before it that is not one), and one `[[nic]]` for
/// the first with the keys in `nic` (one `key = value` a line).
pub fn topology_text(servers: &[Server<'_>], nic: &str) -> String {
    let mut t = String::from("[host]\ncores = [0, 1]\n");
    for s in servers {
        write!(
            t,
            "\n[[guest]]\nname = \"{0}\"\nrole = \"{1}\"\nimage = \"{0}\"\nmemory_mib = {2}\n\
             cores = [{3}]\ncmdline = \"{4}\"\n",
            s.name, s.role, s.memory_mib, s.core, s.cmdline
        )
        .unwrap();
    }
    let mut below = servers.first().map_or("", |s| s.name);
    for s in servers.iter().skip(1) {
        write!(
            t,
            "\n[[channel]]\na = \"{below}\"\nb = \"{}\"\nqueue_depth = 64\nmax_outstanding = 16\n\
             buf_size = 65600\n",
            s.name
        )
        .unwrap();
        if !s.is_app() {
            below = s.name;
        }
    }
    let driver = servers.first().map_or("driver", |s| s.name);
    write!(t, "\n[[nic]]\nguest = \"{driver}\"\n{nic}\n").unwrap();
    t
}
