//! `iperf3 -c`: one test against a (stock) iperf3 server, its summary printed as
//! iperf3 prints it.

use alloc::vec::Vec;
use core::fmt::Write;

use compart_sockets::{Net, SockOpt, Stream};

use crate::config::ClientConfig;
use crate::flow::{Flow, Pump};
use crate::io::Io;
use crate::proto::{
    self, Results, ACCESS_DENIED, CLIENT_TERMINATE, CREATE_STREAMS, DISPLAY_RESULTS,
    EXCHANGE_RESULTS, IPERF_DONE, MAX_RESULTS_JSON, PARAM_EXCHANGE, SERVER_ERROR, SERVER_TERMINATE,
    TEST_END, TEST_RUNNING, TEST_START,
};
use crate::report::{self, Line};
use crate::server::{busy_percent, drain, Reports, CONTROL_EVERY_MS};
use crate::Error;

/// What a finished test moved.
#[derive(Debug, Clone, PartialEq)]
pub struct ClientSummary {
    /// Whether this client sent (not `reverse`).
    pub sending: bool,
    /// Seconds of the test, as this client counted them.
    pub secs: f64,
    /// Per stream: its id and the bytes this client counted.
    pub streams: Vec<(i32, u64)>,
    /// The server's results.
    pub server: Results,
    /// This client's CPU use, percent.
    pub cpu: f64,
}

impl ClientSummary {
    /// Bytes this client counted, over all streams.
    pub fn local_bytes(&self) -> u64 {
        self.streams.iter().map(|s| s.1).sum()
    }

    /// Bytes the server counted, over all streams.
    pub fn server_bytes(&self) -> u64 {
        self.server.streams.iter().map(|s| s.bytes).sum()
    }

    /// Bytes sent, by the sender's count.
    pub fn sent(&self) -> u64 {
        if self.sending {
            self.local_bytes()
        } else {
            self.server_bytes()
        }
    }

    /// Bytes received, by the receiver's count.
    pub fn received(&self) -> u64 {
        if self.sending {
            self.server_bytes()
        } else {
            self.local_bytes()
        }
    }
}

fn state_error<N: Net, S: Stream>(
    io: &mut Io<'_, N>,
    ctrl: &mut S,
    got: i8,
    expected: &'static str,
) -> Error {
    match got {
        ACCESS_DENIED => Error::AccessDenied,
        SERVER_ERROR => {
            let deadline = io.now() + 1000;
            io.read_server_error(ctrl, deadline)
        }
        SERVER_TERMINATE => Error::ServerTerminated,
        got => Error::Unexpected { expected, got },
    }
}

fn expect<N: Net, S: Stream>(
    io: &mut Io<'_, N>,
    ctrl: &mut S,
    want: i8,
    timeout: u64,
    expected: &'static str,
) -> Result<(), Error> {
    let got = io.read_state(ctrl, io.now() + timeout, expected)?;
    if got == want {
        Ok(())
    } else {
        Err(state_error(io, ctrl, got, expected))
    }
}

/// Run the test `cfg` asks for, printing iperf3's report on `out`; `seed` makes the
/// cookie (a different one per run).
pub fn run<N: Net>(
    net: &mut N,
    cfg: &ClientConfig,
    seed: u64,
    out: &mut dyn Write,
) -> Result<ClientSummary, Error> {
    let mut io = Io::new(net);
    report::println(out, format_args!("Connecting to host {}", cfg.server));
    let mut ctrl = io
        .net
        .connect(cfg.server)
        .map_err(|e| Error::Net("connecting the control connection", e))?;
    let r = test(&mut io, &mut ctrl, cfg, seed, out);
    if let Err(e) = &r {
        // Let the server go on to its next client (as iperf3 on an interrupt).
        if matches!(
            e,
            Error::Timeout(_)
                | Error::Stalled(_)
                | Error::Net(..)
                | Error::Json(..)
                | Error::TooLong { .. }
                | Error::Refused(..)
                | Error::Unexpected { .. }
        ) {
            let deadline = io.now() + 1000;
            let _ = io.write_state(&mut ctrl, CLIENT_TERMINATE, deadline);
        }
    }
    r
}

fn test<N: Net>(
    io: &mut Io<'_, N>,
    ctrl: &mut N::Stream,
    cfg: &ClientConfig,
    seed: u64,
    out: &mut dyn Write,
) -> Result<ClientSummary, Error> {
    let net_err = |what| move |e| Error::Net(what, e);
    let timeout = cfg.timeout_ms;
    let p = &cfg.params;
    let sending = !p.reverse;
    ctrl.set_nonblocking(true)
        .map_err(net_err("the control connection"))?;
    ctrl.set_option(SockOpt::NoDelay(true))
        .map_err(net_err("the control connection"))?;
    let cookie = proto::make_cookie(seed);
    io.write_all(ctrl, &cookie, io.now() + timeout, "the cookie")?;
    expect(io, ctrl, PARAM_EXCHANGE, timeout, "PARAM_EXCHANGE")?;
    io.write_json(ctrl, &p.to_json(), io.now() + timeout, "the parameters")?;
    expect(io, ctrl, CREATE_STREAMS, timeout, "CREATE_STREAMS")?;

    let mut flows = Vec::new();
    for i in 0..usize::try_from(p.parallel).unwrap_or(0) {
        let mut s = io
            .net
            .connect(cfg.server)
            .map_err(net_err("connecting a data connection"))?;
        s.set_nonblocking(true)
            .map_err(net_err("a data connection"))?;
        io.write_all(&mut s, &cookie, io.now() + timeout, "a stream's cookie")?;
        if p.window != 0 {
            let opt = if sending {
                SockOpt::SendBuffer(p.window)
            } else {
                SockOpt::RecvBuffer(p.window)
            };
            s.set_option(opt).map_err(net_err("setting the window"))?;
        }
        if p.nodelay {
            s.set_option(SockOpt::NoDelay(true))
                .map_err(net_err("setting TCP_NODELAY"))?;
        }
        let id = proto::stream_id(i);
        report::println(out, format_args!("[{id:3}] connected to {}", s.peer()));
        flows.push(Flow::new(s, id));
    }
    expect(io, ctrl, TEST_START, timeout, "TEST_START")?;
    expect(io, ctrl, TEST_RUNNING, timeout, "TEST_RUNNING")?;
    if !sending {
        report::println(
            out,
            format_args!("Reverse mode, remote host {} is sending", cfg.server),
        );
    }

    let start = io.now();
    let counted_from = start + u64::from(p.omit) * 1000;
    let waited_before = io.waited_ms();
    let end_at = (p.time != 0).then(|| counted_from + u64::from(p.time) * 1000);
    let mut pump = Pump::new(
        sending,
        p.len,
        p.amount(),
        if sending { p.bandwidth } else { 0 },
        start,
        counted_from,
        seed.rotate_left(17),
    );
    let mut reports = Reports::new(cfg.interval_ms, counted_from);
    let mut last_progress = start;
    let mut next_control = start;
    loop {
        let now = io.now();
        if end_at.is_some_and(|t| now >= t)
            || pump.amount_done()
            || flows.iter().all(|f| f.s.is_none())
        {
            break;
        }
        let pass = pump.pass(&mut flows, now);
        if pass.bytes > 0 {
            last_progress = now;
        }
        if pass.bytes == 0 || now >= next_control {
            next_control = now + CONTROL_EVERY_MS;
            if let Some(got) = io.poll_state(ctrl, "the test")? {
                return Err(state_error(io, ctrl, got, "no message during the test"));
            }
        }
        reports.maybe(now, &mut flows, out);
        let stall_at = last_progress + cfg.stall_ms;
        if now >= stall_at {
            return Err(Error::Stalled(now.saturating_sub(last_progress)));
        }
        if pass.bytes == 0 {
            let deadline = [end_at, Some(stall_at), pass.paced_until, reports.next()]
                .into_iter()
                .flatten()
                .min();
            io.wait(deadline);
        }
    }
    let end = io.now();
    reports.finish(end, &mut flows, out);
    let busy = busy_percent(
        end.saturating_sub(start),
        io.waited_ms().saturating_sub(waited_before),
    );
    io.write_state(ctrl, TEST_END, end + timeout)?;

    // The server stops its streams and asks for the results; a receiver takes in what
    // was sent before the server saw TEST_END.
    let deadline = io.now() + timeout;
    loop {
        if !sending {
            drain(io, &mut flows, &mut pump);
        }
        match io.poll_state(ctrl, "EXCHANGE_RESULTS")? {
            Some(EXCHANGE_RESULTS) => break,
            Some(got) => return Err(state_error(io, ctrl, got, "EXCHANGE_RESULTS")),
            None => {}
        }
        if io.now() >= deadline {
            return Err(Error::Timeout("EXCHANGE_RESULTS"));
        }
        io.wait(Some(deadline));
    }
    if !sending {
        drain(io, &mut flows, &mut pump);
    }
    for f in &mut flows {
        f.s = None;
    }
    #[allow(clippy::cast_precision_loss)]
    let secs = end.saturating_sub(counted_from) as f64 / 1000.0;
    let own = Results::measured(
        flows.iter().map(|f| (f.id, f.bytes)),
        secs,
        busy,
        sending,
        None,
    );
    io.write_json(
        ctrl,
        &own.to_json(),
        io.now() + timeout,
        "the client's results",
    )?;
    let v = io.read_json(
        ctrl,
        MAX_RESULTS_JSON,
        io.now() + timeout,
        "the server's results",
    )?;
    let server = Results::from_json(&v).map_err(|r| Error::Refused("the server's results", r.0))?;
    expect(io, ctrl, DISPLAY_RESULTS, timeout, "DISPLAY_RESULTS")?;
    io.write_state(ctrl, IPERF_DONE, io.now() + timeout)?;

    let summary = ClientSummary {
        sending,
        secs,
        streams: flows.iter().map(|f| (f.id, f.bytes)).collect(),
        server,
        cpu: busy,
    };
    print_summary(&summary, out);
    Ok(summary)
}

/// The summary: per stream (and summed) the sender's and the receiver's line.
fn print_summary(s: &ClientSummary, out: &mut dyn Write) {
    let remote_secs = |id: i32| {
        s.server.streams.iter().find(|r| r.id == id).map(|r| {
            (
                r.bytes,
                if r.end_time > 0.0 {
                    r.end_time - r.start_time
                } else {
                    s.secs
                },
            )
        })
    };
    // (sender bytes, sender secs, receiver bytes, receiver secs)
    let lines: Vec<(i32, u64, f64, u64, f64)> = s
        .streams
        .iter()
        .map(|&(id, local)| {
            let (remote, rsecs) = remote_secs(id).unwrap_or((0, s.secs));
            if s.sending {
                (id, local, s.secs, remote, rsecs)
            } else {
                (id, remote, rsecs, local, s.secs)
            }
        })
        .collect();
    report::println(out, format_args!("{}", report::SEPARATOR));
    report::println(out, format_args!("{}", report::HEADER));
    for &(id, sb, ss, rb, rs) in &lines {
        report::println(
            out,
            format_args!(
                "{}",
                Line {
                    id: Some(id),
                    from: 0.0,
                    to: ss,
                    bytes: sb,
                    role: "sender"
                }
            ),
        );
        report::println(
            out,
            format_args!(
                "{}",
                Line {
                    id: Some(id),
                    from: 0.0,
                    to: rs,
                    bytes: rb,
                    role: "receiver"
                }
            ),
        );
    }
    if lines.len() > 1 {
        let secs = |pick: fn(&(i32, u64, f64, u64, f64)) -> f64| {
            lines.iter().map(pick).fold(0.0, f64::max)
        };
        report::println(
            out,
            format_args!(
                "{}",
                Line {
                    id: None,
                    from: 0.0,
                    to: secs(|l| l.2),
                    bytes: s.sent(),
                    role: "sender"
                }
            ),
        );
        report::println(
            out,
            format_args!(
                "{}",
                Line {
                    id: None,
                    from: 0.0,
                    to: secs(|l| l.4),
                    bytes: s.received(),
                    role: "receiver"
                }
            ),
        );
    }
    report::println(
        out,
        format_args!(
            "CPU Utilization: local/{} {:.1}% (awake), remote/{} {:.1}% ({:.1}%u/{:.1}%s)",
            if s.sending { "sender" } else { "receiver" },
            s.cpu,
            if s.sending { "receiver" } else { "sender" },
            s.server.cpu_util[0],
            s.server.cpu_util[1],
            s.server.cpu_util[2]
        ),
    );
    report::println(out, format_args!("\niperf Done."));
}
