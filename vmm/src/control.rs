//! The control protocol and socket: a Unix stream socket on which `compart ctl` (or
//! any client) asks a running VMM to move a guest, report its status, or stop.
//!
//! Both ends are typed: a [`ControlRequest`] goes in, a `Result<`[`ControlResponse`]`,
//! `[`ControlError`]`>` comes back, and [`encode`]/[`decode`] are the one codec: one
//! JSON document per line, one request per connection. For example
//!
//! ```text
//! → {"request":"move","guest":"tcp","cores":[0]}
//! ← {"Ok":{"response":"moved","guest":"tcp","cores":[0],"dedicated":false}}
//! → {"request":"set-ppc","guest":"tcp","ppc":3}
//! ← {"Ok":{"response":"p-state","guest":"tcp","ppc":3,"vcpus":[{"index":0,"requested":3,"pstate":3,"mhz":1500,"followed":true}]}}
//! ```
//!
//! People read the [`Display`](std::fmt::Display) of a response (`compart ctl … status`)
//! or its JSON (`status --json`). Connections are served one at a time with a read
//! timeout, so a stuck client cannot hold the VMM.

use std::fmt;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{de::DeserializeOwned, Deserialize, Serialize};

use crate::host::{core_list, HostCore};
use crate::runtime::VmmHandle;

/// How long a client may take to send its request, and the VMM to answer it.
pub const TIMEOUT: Duration = Duration::from_secs(5);

/// A request to the running VMM.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "request", rename_all = "kebab-case")]
pub enum ControlRequest {
    /// Move every vCPU of a guest onto these host cores.
    Move {
        /// Guest name.
        guest: String,
        /// Host cores.
        cores: Vec<HostCore>,
    },
    /// Lower or raise a guest's performance limit (its `_PPC`: the fastest P-state it
    /// may request) and notify it, as a platform does with `Notify(processor, 0x80)`:
    /// the guest's P-state driver re-reads the limit and requests a state within it
    /// through PERF_CTL. The answer waits (at most [`PPC_WAIT`]) for that request.
    SetPpc {
        /// Guest name.
        guest: String,
        /// The new limit, an index into the guest's `_PSS` (0 = no limit).
        ppc: usize,
    },
    /// Report every guest and vCPU: cores, placement, P-state, exits, queues, events.
    Status,
    /// Stop every guest.
    Stop,
}

/// The VMM's answer to a [`ControlRequest`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "response", rename_all = "kebab-case")]
pub enum ControlResponse {
    /// The guest was moved.
    Moved {
        /// Guest name.
        guest: String,
        /// Its cores now.
        cores: Vec<HostCore>,
        /// Whether each of its vCPUs now has its core to itself.
        dedicated: bool,
    },
    /// A guest's `_PPC` now and the states its vCPUs requested within it.
    PState(PStateReport),
    /// The status of every guest.
    Status(StatusReport),
    /// The VMM is stopping every guest.
    Stopping,
}

/// Why a request was not carried out.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[serde(tag = "error", rename_all = "kebab-case")]
pub enum ControlError {
    /// No guest has that name.
    #[error("no guest named `{guest}`")]
    NoSuchGuest {
        /// The name asked for.
        guest: String,
    },
    /// The guest has ended.
    #[error("guest {guest} is not running")]
    NotRunning {
        /// Guest name.
        guest: String,
    },
    /// The cores asked for cannot be used.
    #[error("{reason}")]
    InvalidCores {
        /// What is wrong with them.
        reason: String,
    },
    /// Re-pinning a vCPU thread failed.
    #[error("cannot pin vCPU {vcpu} of {guest}: {reason}")]
    Pin {
        /// Guest name.
        guest: String,
        /// vCPU index.
        vcpu: u32,
        /// The system's message.
        reason: String,
    },
    /// The P-state limit asked for does not exist.
    #[error("{reason}")]
    InvalidPState {
        /// What is wrong with it.
        reason: String,
    },
    /// The guest did not request a state within its new `_PPC` in time. The limit
    /// stays set (the VMM refuses faster requests), but the guest runs where it was.
    #[error(
        "guest {guest} did not follow _PPC P{ppc} within {waited_ms} ms (the limit is set; {vcpus})"
    )]
    PpcNotFollowed {
        /// Guest name.
        guest: String,
        /// The limit.
        ppc: usize,
        /// How long the VMM waited.
        waited_ms: u64,
        /// Where its vCPUs are, in words.
        vcpus: String,
    },
    /// The VMM has stopped.
    #[error("the VMM has stopped")]
    Stopped,
    /// The VMM did not answer in time.
    #[error("the VMM did not answer in time")]
    Timeout,
    /// The request or response could not be sent, received or understood.
    #[error("control protocol: {reason}")]
    Protocol {
        /// What went wrong.
        reason: String,
    },
}

/// Every guest, in topology order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusReport {
    /// The guests.
    pub guests: Vec<GuestStatus>,
}

/// One guest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GuestStatus {
    /// Its name.
    pub name: String,
    /// Its role, as the topology spells it.
    pub role: String,
    /// Running, or how it ended.
    pub state: StateReport,
    /// Its vCPUs that have started.
    pub vcpus: Vec<VcpuStatus>,
    /// Its channels, in boot-info order.
    pub channels: Vec<ChannelStatus>,
    /// The NICs it drives, in boot-info order.
    #[serde(default)]
    pub nics: Vec<NicStatus>,
    /// Events it caused, since it started.
    pub events: EventTotals,
}

/// One NIC: its device's state and totals since start.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NicStatus {
    /// Its host side's name (the TAP, or the interface under the macvtap).
    pub name: String,
    /// Its network namespace, if not the VMM's.
    pub netns: Option<String>,
    /// Whether the driver has activated it (`DRIVER_OK`).
    pub active: bool,
    /// The feature bits the driver acknowledged (0 until active).
    pub features: u64,
    /// The device thread's Linux id.
    pub thread_tid: i32,
    /// Whether the device thread runs (it stops when its driver guest ends).
    pub running: bool,
    /// Frames sent (guest → host), their bytes, and those dropped.
    pub tx_packets: u64,
    /// Bytes sent, without virtio headers.
    pub tx_bytes: u64,
    /// Frames from the guest dropped.
    pub tx_drops: u64,
    /// Frames received (host → guest).
    pub rx_packets: u64,
    /// Bytes received, without virtio headers.
    pub rx_bytes: u64,
    /// Frames from the host dropped (no room in the guest's buffer).
    pub rx_drops: u64,
    /// Descriptor chains refused.
    pub bad_chains: u64,
    /// Register accesses refused.
    pub refused_accesses: u64,
    /// Queue notifications (kicks) the device thread received.
    pub notifications: u64,
    /// Used-buffer interrupts sent.
    pub interrupts: u64,
    /// Times the device thread woke from sleep.
    pub wakeups: u64,
    /// Time the device thread spent processing, in microseconds.
    pub busy_us: u64,
}

/// How a guest is doing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "kebab-case")]
pub enum StateReport {
    /// Running.
    Running,
    /// It exited with this status.
    Exited {
        /// Exit status.
        status: i32,
    },
    /// It failed.
    Failed {
        /// Why, as the log says it.
        failure: String,
    },
    /// The VMM stopped it.
    Stopped,
}

/// One vCPU.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VcpuStatus {
    /// vCPU index.
    pub index: u32,
    /// Linux thread id.
    pub tid: i32,
    /// Host cores it may run on now.
    pub cores: Vec<HostCore>,
    /// Whether it has its core to itself (it polls before sleeping).
    pub dedicated: bool,
    /// Its effective P-state.
    pub pstate: usize,
    /// The P-state it requested last (through PERF_CTL, or the topology's at start).
    #[serde(default)]
    pub requested: usize,
    /// Its guest's `_PPC` now: the fastest state it may request.
    #[serde(default)]
    pub ppc: usize,
    /// Its effective frequency in MHz.
    pub mhz: u32,
    /// The backend applying it.
    pub backend: String,
    /// Exits that reached the VMM (kicks included), in total.
    pub exits: u64,
}

/// How long a [`ControlRequest::SetPpc`] waits for the guest's request.
pub const PPC_WAIT: Duration = Duration::from_secs(2);

/// A guest's P-state limit and where its vCPUs are within it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PStateReport {
    /// Guest name.
    pub guest: String,
    /// Its `_PPC` now.
    pub ppc: usize,
    /// Its vCPUs.
    pub vcpus: Vec<VcpuPStateReport>,
}

/// One vCPU within its guest's `_PPC`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VcpuPStateReport {
    /// vCPU index.
    pub index: u32,
    /// The state it requested last.
    pub requested: usize,
    /// The state it runs at.
    pub pstate: usize,
    /// Its effective frequency in MHz.
    pub mhz: u32,
    /// Whether it has requested a state since `_PPC` last changed.
    pub followed: bool,
}

impl PStateReport {
    /// Whether every vCPU has requested a state since the limit last changed.
    pub fn followed(&self) -> bool {
        self.vcpus.iter().all(|v| v.followed)
    }

    /// Where the vCPUs are, in words (`vCPU 0 requests P3, runs at P3 (1500 MHz)`).
    pub fn vcpu_summary(&self) -> String {
        self.vcpus
            .iter()
            .map(|v| {
                format!(
                    "vCPU {} requests P{}, runs at P{} ({} MHz){}",
                    v.index,
                    v.requested,
                    v.pstate,
                    v.mhz,
                    if v.followed {
                        ""
                    } else {
                        ", has not requested since the limit changed"
                    }
                )
            })
            .collect::<Vec<_>>()
            .join("; ")
    }
}

impl fmt::Display for PStateReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "guest {}: _PPC P{}; {}",
            self.guest,
            self.ppc,
            self.vcpu_summary()
        )
    }
}

/// One channel as one of its guests sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChannelStatus {
    /// The guest at the other end.
    pub peer: String,
    /// This guest's side: `a` or `b`.
    pub side: String,
    /// Messages waiting now.
    pub depth: QueueDepth,
    /// Totals since the channel was created.
    pub totals: ChannelTotals,
}

/// Current queue depths of one side.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueDepth {
    /// Requests waiting for this guest.
    pub requests_in: u32,
    /// This guest's requests the peer has not taken yet.
    pub requests_out: u32,
    /// Replies waiting for this guest.
    pub replies_in: u32,
    /// This guest's replies the peer has not taken yet.
    pub replies_out: u32,
}

/// Totals of one side (messages modulo 2³²).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChannelTotals {
    /// Requests sent.
    pub requests_sent: u32,
    /// Requests received.
    pub requests_received: u32,
    /// Replies sent.
    pub replies_sent: u32,
    /// Replies received.
    pub replies_received: u32,
    /// Times this guest announced that it sleeps.
    pub sleeps: u64,
    /// Times the peer kicked it awake.
    pub kicks: u64,
}

/// Guest-caused events (see `crate::guest_events`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventTotals {
    /// MSR writes the VMM refused.
    pub refused_msr_writes: u64,
    /// Changes of a vCPU's effective P-state.
    pub pstate_changes: u64,
    /// Descriptor chains a device refused.
    #[serde(default)]
    pub refused_descriptor_chains: u64,
    /// Device register accesses refused.
    #[serde(default)]
    pub refused_device_accesses: u64,
}

impl fmt::Display for StateReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StateReport::Running => f.write_str("running"),
            StateReport::Exited { status } => write!(f, "exited with status {status}"),
            StateReport::Failed { failure } => write!(f, "failed: {failure}"),
            StateReport::Stopped => f.write_str("stopped"),
        }
    }
}

impl fmt::Display for StatusReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for g in &self.guests {
            writeln!(f, "guest {} ({}): {}", g.name, g.role, g.state)?;
            for v in &g.vcpus {
                writeln!(
                    f,
                    "  vcpu {} tid {} cores {} {} P{} {} MHz ({}; requested P{}, _PPC P{}) exits {}",
                    v.index,
                    v.tid,
                    core_list(&v.cores),
                    if v.dedicated { "dedicated" } else { "shared" },
                    v.pstate,
                    v.mhz,
                    v.backend,
                    v.requested,
                    v.ppc,
                    v.exits
                )?;
            }
            for c in &g.channels {
                let (d, t) = (&c.depth, &c.totals);
                writeln!(
                    f,
                    "  channel to {} (side {}): waiting now: requests in {} out {}, replies in {} out {}; \
                     in total: requests sent {} received {}, replies sent {} received {}, sleeps {}, kicks {}",
                    c.peer,
                    c.side,
                    d.requests_in,
                    d.requests_out,
                    d.replies_in,
                    d.replies_out,
                    t.requests_sent,
                    t.requests_received,
                    t.replies_sent,
                    t.replies_received,
                    t.sleeps,
                    t.kicks
                )?;
            }
            for n in &g.nics {
                writeln!(
                    f,
                    "  nic {}{}: {} features {:#x} thread {}{}; tx {} packets {} bytes {} dropped; \
                     rx {} packets {} bytes {} dropped; refused chains {} accesses {}; \
                     notifications {}, interrupts {}, wake-ups {}, busy {} µs",
                    n.name,
                    n.netns
                        .as_ref()
                        .map(|ns| format!(" (netns {ns})"))
                        .unwrap_or_default(),
                    if n.active { "active" } else { "not active" },
                    n.features,
                    n.thread_tid,
                    if n.running { "" } else { " (stopped)" },
                    n.tx_packets,
                    n.tx_bytes,
                    n.tx_drops,
                    n.rx_packets,
                    n.rx_bytes,
                    n.rx_drops,
                    n.bad_chains,
                    n.refused_accesses,
                    n.notifications,
                    n.interrupts,
                    n.wakeups,
                    n.busy_us
                )?;
            }
            writeln!(
                f,
                "  guest events: refused MSR writes {}, P-state changes {}, refused descriptor chains {}, refused device accesses {}",
                g.events.refused_msr_writes,
                g.events.pstate_changes,
                g.events.refused_descriptor_chains,
                g.events.refused_device_accesses
            )?;
        }
        Ok(())
    }
}

impl fmt::Display for ControlResponse {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ControlResponse::Moved {
                guest,
                cores,
                dedicated,
            } => write!(
                f,
                "moved {guest} to host core(s) {} ({})",
                core_list(cores),
                if *dedicated { "dedicated" } else { "shared" }
            ),
            ControlResponse::PState(r) => write!(f, "{r}"),
            ControlResponse::Status(s) => write!(f, "{}", s.to_string().trim_end()),
            ControlResponse::Stopping => f.write_str("stopping"),
        }
    }
}

/// One message as one line of JSON.
pub fn encode<T: Serialize>(message: &T) -> String {
    let mut line = serde_json::to_string(message).expect("control messages always serialize");
    line.push('\n');
    line
}

/// One message from one line of JSON.
pub fn decode<T: DeserializeOwned>(line: &str) -> Result<T, ControlError> {
    serde_json::from_str(line.trim()).map_err(|e| ControlError::Protocol {
        reason: format!("cannot read `{}`: {e}", line.trim()),
    })
}

/// Serves the control socket at `path` until the VMM stops; removes it afterwards.
#[derive(Debug)]
pub struct ControlServer {
    path: PathBuf,
}

impl ControlServer {
    /// Binds `path` (replacing a stale socket) and serves it on a thread.
    pub fn start(path: &Path, vmm: VmmHandle) -> std::io::Result<ControlServer> {
        if path.exists() {
            std::fs::remove_file(path)?;
        }
        let listener = UnixListener::bind(path)?;
        std::thread::Builder::new()
            .name("control".into())
            .spawn(move || {
                for conn in listener.incoming().flatten() {
                    if let Err(e) = serve(conn, &vmm) {
                        log::warn!("control socket: {e}");
                    }
                }
            })?;
        Ok(ControlServer {
            path: path.to_path_buf(),
        })
    }
}

impl Drop for ControlServer {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

fn serve(conn: UnixStream, vmm: &VmmHandle) -> std::io::Result<()> {
    conn.set_read_timeout(Some(TIMEOUT))?;
    conn.set_write_timeout(Some(TIMEOUT))?;
    let mut line = String::new();
    BufReader::new(&conn).take(4096).read_line(&mut line)?;
    let answer = decode::<ControlRequest>(&line).and_then(|r| vmm.request(r, TIMEOUT));
    (&conn).write_all(encode(&answer).as_bytes())
}

/// Sends one request to the socket at `path` and returns the VMM's answer.
pub fn send(path: &Path, request: &ControlRequest) -> Result<ControlResponse, ControlError> {
    let socket = path.display();
    let protocol = |what: String| {
        move |e: std::io::Error| ControlError::Protocol {
            reason: format!("{what}: {e}"),
        }
    };
    let mut conn = UnixStream::connect(path).map_err(protocol(format!(
        "cannot connect to {socket} (is `compart run --control` running?)"
    )))?;
    conn.set_read_timeout(Some(TIMEOUT * 2))
        .map_err(protocol(format!("cannot set a timeout on {socket}")))?;
    conn.write_all(encode(request).as_bytes())
        .map_err(protocol(format!("cannot write to {socket}")))?;
    let mut answer = String::new();
    conn.read_to_string(&mut answer)
        .map_err(protocol(format!("cannot read from {socket}")))?;
    decode::<Result<ControlResponse, ControlError>>(&answer)?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_and_answers_survive_the_codec() {
        let requests = [
            ControlRequest::Move {
                guest: "tcp".into(),
                cores: vec![HostCore(0), HostCore(1)],
            },
            ControlRequest::SetPpc {
                guest: "tcp".into(),
                ppc: 3,
            },
            ControlRequest::Status,
            ControlRequest::Stop,
        ];
        for r in requests {
            let line = encode(&r);
            assert!(line.ends_with('\n') && !line[..line.len() - 1].contains('\n'));
            assert_eq!(decode::<ControlRequest>(&line).unwrap(), r);
        }
        assert_eq!(
            encode(&ControlRequest::Move {
                guest: "tcp".into(),
                cores: vec![HostCore(0)]
            }),
            "{\"request\":\"move\",\"guest\":\"tcp\",\"cores\":[0]}\n"
        );
        assert_eq!(
            encode(&ControlRequest::SetPpc {
                guest: "tcp".into(),
                ppc: 3
            }),
            "{\"request\":\"set-ppc\",\"guest\":\"tcp\",\"ppc\":3}\n"
        );
        let answers: [Result<ControlResponse, ControlError>; 5] = [
            Ok(ControlResponse::Moved {
                guest: "tcp".into(),
                cores: vec![HostCore(0)],
                dedicated: false,
            }),
            Err(ControlError::NoSuchGuest {
                guest: "nobody".into(),
            }),
            Ok(ControlResponse::PState(PStateReport {
                guest: "tcp".into(),
                ppc: 3,
                vcpus: vec![VcpuPStateReport {
                    index: 0,
                    requested: 3,
                    pstate: 3,
                    mhz: 1500,
                    followed: true,
                }],
            })),
            Err(ControlError::InvalidPState {
                reason: "_PPC 9 is out of range".into(),
            }),
            Err(ControlError::PpcNotFollowed {
                guest: "tcp".into(),
                ppc: 2,
                waited_ms: 2000,
                vcpus: "vCPU 0 requests P0".into(),
            }),
        ];
        for a in answers {
            assert_eq!(
                decode::<Result<ControlResponse, ControlError>>(&encode(&a)).unwrap(),
                a
            );
        }
    }

    #[test]
    fn a_vcpu_status_without_request_and_ppc_reads_as_p0_unlimited() {
        let v: VcpuStatus = serde_json::from_str(
            r#"{"index":0,"tid":1,"cores":[0],"dedicated":true,"pstate":2,"mhz":1500,"backend":"soft","exits":3}"#,
        )
        .unwrap();
        assert_eq!((v.pstate, v.requested, v.ppc), (2, 0, 0));
    }

    #[test]
    fn p_state_answers_read_as_sentences() {
        let mut r = PStateReport {
            guest: "tcp".into(),
            ppc: 3,
            vcpus: vec![VcpuPStateReport {
                index: 0,
                requested: 3,
                pstate: 3,
                mhz: 1500,
                followed: true,
            }],
        };
        assert!(r.followed());
        assert_eq!(
            ControlResponse::PState(r.clone()).to_string(),
            "guest tcp: _PPC P3; vCPU 0 requests P3, runs at P3 (1500 MHz)"
        );
        r.vcpus[0].followed = false;
        assert!(!r.followed());
        assert_eq!(
            ControlError::PpcNotFollowed {
                guest: "tcp".into(),
                ppc: 3,
                waited_ms: 2000,
                vcpus: r.vcpu_summary(),
            }
            .to_string(),
            "guest tcp did not follow _PPC P3 within 2000 ms (the limit is set; vCPU 0 requests \
             P3, runs at P3 (1500 MHz), has not requested since the limit changed)"
        );
    }

    #[test]
    fn malformed_requests_are_protocol_errors() {
        for bad in [
            "move tcp 0",
            "{\"request\":\"reboot\"}",
            "{\"request\":\"move\",\"guest\":\"tcp\"}",
            "{\"request\":\"move\",\"guest\":\"tcp\",\"cores\":[-1]}",
            "{\"request\":\"set-ppc\",\"guest\":\"tcp\"}",
            "{\"request\":\"set-ppc\",\"guest\":\"tcp\",\"ppc\":-1}",
            "{\"request\":\"set-ppc\",\"guest\":\"tcp\",\"ppc\":\"P3\"}",
        ] {
            assert!(
                matches!(
                    decode::<ControlRequest>(bad),
                    Err(ControlError::Protocol { .. })
                ),
                "{bad}"
            );
        }
    }

    #[test]
    fn the_text_view_reads_as_sentences_without_debug_output() {
        let report = StatusReport {
            guests: vec![GuestStatus {
                name: "tcp".into(),
                role: "tcp".into(),
                state: StateReport::Running,
                vcpus: vec![VcpuStatus {
                    index: 0,
                    tid: 42,
                    cores: vec![HostCore(0), HostCore(1)],
                    dedicated: false,
                    pstate: 2,
                    requested: 2,
                    ppc: 1,
                    mhz: 1200,
                    backend: "soft".into(),
                    exits: 7,
                }],
                channels: vec![ChannelStatus {
                    peer: "ip".into(),
                    side: "a".into(),
                    depth: QueueDepth {
                        requests_in: 1,
                        requests_out: 2,
                        replies_in: 3,
                        replies_out: 4,
                    },
                    totals: ChannelTotals {
                        requests_sent: 10,
                        requests_received: 11,
                        replies_sent: 12,
                        replies_received: 13,
                        sleeps: 5,
                        kicks: 6,
                    },
                }],
                nics: vec![NicStatus {
                    name: "cpt0".into(),
                    netns: Some("ns".into()),
                    active: true,
                    features: 0x1_2000_0020,
                    thread_tid: 43,
                    running: true,
                    tx_packets: 1,
                    tx_bytes: 2,
                    tx_drops: 3,
                    rx_packets: 4,
                    rx_bytes: 5,
                    rx_drops: 6,
                    bad_chains: 7,
                    refused_accesses: 8,
                    notifications: 9,
                    interrupts: 10,
                    wakeups: 11,
                    busy_us: 12,
                }],
                events: EventTotals {
                    refused_msr_writes: 8,
                    pstate_changes: 9,
                    refused_descriptor_chains: 7,
                    refused_device_accesses: 8,
                },
            }],
        };
        assert_eq!(
            report.to_string(),
            "guest tcp (tcp): running\n\
             \x20 vcpu 0 tid 42 cores 0-1 shared P2 1200 MHz (soft; requested P2, _PPC P1) exits 7\n\
             \x20 channel to ip (side a): waiting now: requests in 1 out 2, replies in 3 out 4; \
             in total: requests sent 10 received 11, replies sent 12 received 13, sleeps 5, kicks 6\n\
             \x20 nic cpt0 (netns ns): active features 0x120000020 thread 43; tx 1 packets 2 bytes 3 dropped; \
             rx 4 packets 5 bytes 6 dropped; refused chains 7 accesses 8; \
             notifications 9, interrupts 10, wake-ups 11, busy 12 µs\n\
             \x20 guest events: refused MSR writes 8, P-state changes 9, refused descriptor chains 7, \
             refused device accesses 8\n"
        );
    }
}
