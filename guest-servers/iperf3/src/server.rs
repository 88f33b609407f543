//! `iperf3 -s`: one test at a time on one port (control and data connections alike).
//!
//! A test: the control connection's cookie, [`PARAM_EXCHANGE`] and the parameters
//! (refused with SERVER_ERROR and iperf3's error number when out of range or not
//! supported), [`CREATE_STREAMS`] and `parallel` data connections presenting the same
//! cookie (a wrong cookie gets `ACCESS_DENIED`), [`TEST_START`] and [`TEST_RUNNING`],
//! the transfer until the client's [`TEST_END`], then the results both ways,
//! [`DISPLAY_RESULTS`] and the client's [`IPERF_DONE`]. Connections from other clients
//! meanwhile get `ACCESS_DENIED`. A test that stalls (no data for `stall`), runs past its
//! time by the grace period, or whose messages do not come in `timeout`, is abandoned
//! with SERVER_ERROR; the server then takes the next client.

use alloc::string::String;
use alloc::vec::Vec;
use core::fmt::Write;

use compart_sockets::{Errno, Listener, Net, Peer, SockOpt, Stream};

use crate::config::ServerConfig;
use crate::flow::{Flow, Pump};
use crate::io::Io;
use crate::proto::{
    self, Params, Results, ACCESS_DENIED, CLIENT_TERMINATE, COOKIE_SIZE, CREATE_STREAMS,
    DISPLAY_RESULTS, EXCHANGE_RESULTS, IPERF_DONE, MAX_PARAMS_JSON, MAX_RESULTS_JSON,
    PARAM_EXCHANGE, TEST_END, TEST_RUNNING, TEST_START,
};
use crate::report::{self, Line};
use crate::Error;

/// Seconds past a test's time (and omitted start) before the server gives up on it
/// (iperf3: 4 s of round trip × 10 state changes).
const GRACE_MS: u64 = 40_000;
/// How often, during a test, other clients' connections are looked for (and refused).
const REFUSE_EVERY_MS: u64 = 100;
/// While data flows, how often the control connection is looked at (every pass that
/// moved nothing looks too): each look is a socket call, as dear as a data one.
pub(crate) const CONTROL_EVERY_MS: u64 = 5;
/// What the listener was doing when it failed (which ends the server).
const ACCEPTING: &str = "accepting a client";
/// Connections that may complete at once on the port (the stack may allow fewer).
const BACKLOG: u32 = 8;
/// Connections being read for their cookie beyond the streams asked for.
const SPARE_PENDING: usize = 4;

/// What a finished test moved.
#[derive(Debug, Clone, PartialEq)]
pub struct TestSummary {
    /// The client.
    pub peer: Peer,
    /// What it asked for.
    pub params: Params,
    /// Whether this server sent (`-R`).
    pub sending: bool,
    /// Per stream: its id and the bytes this server counted.
    pub streams: Vec<(i32, u64)>,
    /// Seconds counted (the omitted start excluded).
    pub secs: f64,
    /// The client's results.
    pub client: Results,
}

impl TestSummary {
    /// Bytes over all streams.
    pub fn bytes(&self) -> u64 {
        self.streams.iter().map(|s| s.1).sum()
    }
}

/// A listening iperf3 server.
#[derive(Debug)]
pub struct Server<L> {
    listener: L,
    cfg: ServerConfig,
    tests: u64,
}

impl<L: Listener> Server<L> {
    /// Listen on the configured port.
    pub fn listen<N: Net<Listener = L>>(
        net: &mut N,
        cfg: ServerConfig,
    ) -> Result<Server<L>, Error> {
        let mut listener = net
            .listen(cfg.port, BACKLOG)
            .map_err(|e| Error::Net("listening", e))?;
        listener
            .set_nonblocking(true)
            .map_err(|e| Error::Net("listening", e))?;
        Ok(Server {
            listener,
            cfg,
            tests: 0,
        })
    }

    /// Serve tests: forever, or as many as configured. A failed test is reported on
    /// `out` and the next client served; only the listener failing ends the server
    /// (with that error).
    pub fn run<N: Net<Listener = L, Stream = L::Stream>>(
        &mut self,
        net: &mut N,
        out: &mut dyn Write,
    ) -> Result<(), Error> {
        report::println(out, format_args!("Server listening on {}", self.cfg.port));
        let mut done = 0u32;
        while self.cfg.tests.is_none_or(|n| done < n) {
            let mut io = Io::new(net);
            match self.serve_one(&mut io, out) {
                Ok(_) => {}
                Err(e @ Error::Net(ACCEPTING, _)) => return Err(e),
                Err(e) => report::println(out, format_args!("iperf3: error - {e}")),
            }
            done = done.saturating_add(1);
            report::println(
                out,
                format_args!("-----------------------------------------------------------"),
            );
            if self.cfg.tests.is_none_or(|n| done < n) {
                report::println(out, format_args!("Server listening on {}", self.cfg.port));
            }
        }
        Ok(())
    }

    /// Wait for a client and run its test.
    pub fn serve_one<N: Net<Listener = L, Stream = L::Stream>>(
        &mut self,
        io: &mut Io<'_, N>,
        out: &mut dyn Write,
    ) -> Result<TestSummary, Error> {
        let (mut ctrl, peer) = loop {
            match self.listener.accept() {
                Ok(c) => break c,
                Err(Errno::Again) => io.wait(None),
                Err(e) => return Err(Error::Net(ACCEPTING, e)),
            }
        };
        report::println(out, format_args!("Accepted connection from {peer}"));
        self.tests += 1;
        let r = self.test(io, &mut ctrl, peer, out);
        if let Err(e) = &r {
            if !matches!(
                e,
                Error::Closed(_) | Error::ClientTerminated | Error::Net(..)
            ) {
                let deadline = io.now() + 1000;
                io.send_server_error(&mut ctrl, crate::iperf_errno(e), deadline);
            }
        }
        r
    }

    fn test<N: Net<Listener = L, Stream = L::Stream>>(
        &mut self,
        io: &mut Io<'_, N>,
        ctrl: &mut L::Stream,
        peer: Peer,
        out: &mut dyn Write,
    ) -> Result<TestSummary, Error> {
        let net_err = |what| move |e| Error::Net(what, e);
        ctrl.set_nonblocking(true)
            .map_err(net_err("the control connection"))?;
        ctrl.set_option(SockOpt::NoDelay(true))
            .map_err(net_err("the control connection"))?;
        let timeout = self.cfg.timeout_ms;
        let mut cookie = [0u8; COOKIE_SIZE];
        io.read_exact(ctrl, &mut cookie, io.now() + timeout, "the cookie")?;
        io.write_state(ctrl, PARAM_EXCHANGE, io.now() + timeout)?;
        let v = io.read_json(ctrl, MAX_PARAMS_JSON, io.now() + timeout, "the parameters")?;
        let params = Params::from_json(&v, self.cfg.max_streams)
            .map_err(|r| Error::Refused("the parameters", r.0))?;
        let sending = params.reverse;
        report::println(
            out,
            format_args!(
                "Starting test: {} stream(s), {} byte blocks, {}, {}",
                params.parallel,
                params.len,
                match params.amount() {
                    Some(n) => alloc::format!("{n} bytes"),
                    None => alloc::format!("{} s", params.time),
                },
                if sending {
                    "server sending"
                } else {
                    "server receiving"
                }
            ),
        );
        io.write_state(ctrl, CREATE_STREAMS, io.now() + timeout)?;
        let mut flows = self.accept_streams(io, ctrl, &cookie, params.parallel)?;
        for f in &mut flows {
            let Some(s) = f.s.as_mut() else { continue };
            if params.window != 0 {
                let opt = if sending {
                    SockOpt::SendBuffer(params.window)
                } else {
                    SockOpt::RecvBuffer(params.window)
                };
                // The stack refuses a window beyond its buffers: tell the client.
                s.set_option(opt)
                    .map_err(|_| Error::Refused("the window", proto::IESETWINDOWSIZE))?;
            }
            if params.nodelay {
                s.set_option(SockOpt::NoDelay(true))
                    .map_err(net_err("setting TCP_NODELAY"))?;
            }
            report::println(out, format_args!("[{:3}] connected to {}", f.id, s.peer()));
        }
        io.write_state(ctrl, TEST_START, io.now() + timeout)?;
        io.write_state(ctrl, TEST_RUNNING, io.now() + timeout)?;

        let start = io.now();
        let counted_from = start + u64::from(params.omit) * 1000;
        let waited_before = io.waited_ms();
        let seed = start ^ (self.tests << 32);
        let mut pump = Pump::new(
            sending,
            params.len,
            params.amount(),
            if sending { params.bandwidth } else { 0 },
            start,
            counted_from,
            seed,
        );
        let end = self.transfer(
            io,
            ctrl,
            &mut flows,
            &mut pump,
            &params,
            start,
            counted_from,
            out,
        )?;
        let busy = busy_percent(
            end.saturating_sub(start),
            io.waited_ms().saturating_sub(waited_before),
        );
        if !sending {
            drain(io, &mut flows, &mut pump);
        }
        for f in &mut flows {
            f.s = None;
        }

        io.write_state(ctrl, EXCHANGE_RESULTS, io.now() + timeout)?;
        let v = io.read_json(
            ctrl,
            MAX_RESULTS_JSON,
            io.now() + timeout,
            "the client's results",
        )?;
        let client =
            Results::from_json(&v).map_err(|r| Error::Refused("the client's results", r.0))?;
        #[allow(clippy::cast_precision_loss)]
        let secs = end.saturating_sub(counted_from) as f64 / 1000.0;
        let summary = TestSummary {
            peer,
            params,
            sending,
            streams: flows.iter().map(|f| (f.id, f.bytes)).collect(),
            secs,
            client,
        };
        let text = summary_text(&summary, busy);
        let own = Results::measured(
            flows.iter().map(|f| (f.id, f.bytes)),
            secs,
            busy,
            sending,
            summary.params.get_server_output.then(|| text.clone()),
        );
        io.write_json(
            ctrl,
            &own.to_json(),
            io.now() + timeout,
            "the server's results",
        )?;
        io.write_state(ctrl, DISPLAY_RESULTS, io.now() + timeout)?;
        match io.read_state(ctrl, io.now() + timeout, "IPERF_DONE")? {
            IPERF_DONE => {}
            got => {
                return Err(Error::Unexpected {
                    expected: "IPERF_DONE",
                    got,
                })
            }
        }
        let _ = out.write_str(&text);
        Ok(summary)
    }

    /// Accept `parallel` data connections carrying `cookie`, in the order they connect.
    fn accept_streams<N: Net<Listener = L, Stream = L::Stream>>(
        &mut self,
        io: &mut Io<'_, N>,
        ctrl: &mut L::Stream,
        cookie: &[u8; COOKIE_SIZE],
        parallel: u32,
    ) -> Result<Vec<Flow<L::Stream>>, Error> {
        struct Pending<S> {
            s: S,
            seq: usize,
            got: usize,
            cookie: [u8; COOKIE_SIZE],
        }
        let want = usize::try_from(parallel).unwrap_or(usize::MAX);
        let mut pending: Vec<Pending<L::Stream>> = Vec::new();
        let mut ready: Vec<(usize, L::Stream)> = Vec::new();
        let mut seq = 0;
        let deadline = io.now() + self.cfg.timeout_ms;
        while ready.len() < want {
            let mut progress = false;
            loop {
                match self.listener.accept() {
                    Ok((mut s, _)) => {
                        progress = true;
                        s.set_nonblocking(true)
                            .map_err(|e| Error::Net("accepting a stream", e))?;
                        if pending.len() + ready.len() < want + SPARE_PENDING {
                            pending.push(Pending {
                                s,
                                seq,
                                got: 0,
                                cookie: [0; COOKIE_SIZE],
                            });
                            seq += 1;
                        }
                    }
                    Err(Errno::Again) => break,
                    Err(e) => return Err(Error::Net("accepting a stream", e)),
                }
            }
            let mut i = 0;
            while i < pending.len() {
                let p = &mut pending[i];
                match p.s.read(&mut p.cookie[p.got..]) {
                    Ok(n) if n > 0 => {
                        progress = true;
                        p.got += n;
                    }
                    Err(Errno::Again) => {
                        i += 1;
                        continue;
                    }
                    // Closed or failed before its cookie: forget it.
                    Ok(_) | Err(_) => {
                        pending.swap_remove(i);
                        continue;
                    }
                }
                if pending[i].got == COOKIE_SIZE {
                    let mut p = pending.swap_remove(i);
                    if &p.cookie == cookie {
                        ready.push((p.seq, p.s));
                    } else {
                        let _ = p.s.write(&ACCESS_DENIED.to_ne_bytes());
                    }
                    continue;
                }
                i += 1;
            }
            if ready.len() >= want {
                break;
            }
            match io.poll_state(ctrl, "the data connections")? {
                None => {}
                Some(CLIENT_TERMINATE) => return Err(Error::ClientTerminated),
                Some(got) => {
                    return Err(Error::Unexpected {
                        expected: "data connections",
                        got,
                    })
                }
            }
            if io.now() >= deadline {
                return Err(Error::Timeout("the data connections"));
            }
            if !progress {
                io.wait(Some(deadline));
            }
        }
        ready.sort_by_key(|r| r.0);
        Ok(ready
            .into_iter()
            .enumerate()
            .map(|(i, (_, s))| Flow::new(s, proto::stream_id(i)))
            .collect())
    }

    /// Connections from other clients during a test: `ACCESS_DENIED`, closed.
    fn refuse_others(&mut self) {
        for _ in 0..8 {
            let Ok((mut s, _)) = self.listener.accept() else {
                return;
            };
            let _ = s.set_nonblocking(true);
            let _ = s.write(&ACCESS_DENIED.to_ne_bytes());
        }
    }

    /// Move the data until the client's TEST_END; its time.
    #[allow(clippy::too_many_arguments)]
    fn transfer<N: Net<Listener = L, Stream = L::Stream>>(
        &mut self,
        io: &mut Io<'_, N>,
        ctrl: &mut L::Stream,
        flows: &mut [Flow<L::Stream>],
        pump: &mut Pump,
        params: &Params,
        start: u64,
        counted_from: u64,
        out: &mut dyn Write,
    ) -> Result<u64, Error> {
        let overrun = (params.time != 0 || params.amount().is_none())
            .then(|| counted_from + u64::from(params.time) * 1000 + GRACE_MS);
        let interval = self.cfg.interval_ms;
        let mut reports = Reports::new(interval, counted_from);
        let mut last_progress = start;
        let mut next_refuse = start + REFUSE_EVERY_MS;
        let mut next_control = start;
        loop {
            let now = io.now();
            let pass = pump.pass(flows, now);
            if pass.bytes > 0 {
                last_progress = now;
            }
            let look = pass.bytes == 0 || now >= next_control;
            if look {
                next_control = now + CONTROL_EVERY_MS;
            }
            match if look {
                io.poll_state(ctrl, "TEST_END")?
            } else {
                None
            } {
                None => {}
                Some(TEST_END) => {
                    let end = io.now();
                    reports.finish(end, flows, out);
                    return Ok(end);
                }
                Some(CLIENT_TERMINATE) => return Err(Error::ClientTerminated),
                Some(got) => {
                    return Err(Error::Unexpected {
                        expected: "TEST_END",
                        got,
                    })
                }
            }
            reports.maybe(now, flows, out);
            if now >= next_refuse {
                self.refuse_others();
                next_refuse = now + REFUSE_EVERY_MS;
            }
            let stall_at = (!pump.amount_done()).then(|| last_progress + self.cfg.stall_ms);
            if stall_at.is_some_and(|t| now >= t) {
                return Err(Error::Stalled(now.saturating_sub(last_progress)));
            }
            if overrun.is_some_and(|t| now >= t) {
                return Err(Error::Overran);
            }
            if pass.bytes == 0 {
                let deadline = [
                    Some(next_refuse),
                    stall_at,
                    overrun,
                    pass.paced_until,
                    reports.next(),
                ]
                .into_iter()
                .flatten()
                .min();
                io.wait(deadline);
            }
        }
    }
}

/// After TEST_END: what the streams still hold (the client wrote it before TEST_END),
/// until they have been quiet for a few ms, within 200 ms.
pub(crate) fn drain<N: Net, S: Stream>(io: &mut Io<'_, N>, flows: &mut [Flow<S>], pump: &mut Pump) {
    let until = io.now() + 200;
    let mut quiet = 0;
    while quiet < 3 && io.now() < until {
        let now = io.now();
        if pump.pass(flows, now).bytes > 0 {
            quiet = 0;
        } else {
            quiet += 1;
            io.wait(Some((now + 2).min(until)));
        }
    }
}

/// The share of `elapsed` ms not spent waiting, in percent.
pub(crate) fn busy_percent(elapsed: u64, waited: u64) -> f64 {
    if elapsed == 0 {
        return 0.0;
    }
    #[allow(clippy::cast_precision_loss)]
    let busy = elapsed.saturating_sub(waited) as f64 / elapsed as f64;
    busy * 100.0
}

/// Interval reports every `interval` ms.
pub(crate) struct Reports {
    interval: u64,
    origin: u64,
    next: u64,
}

impl Reports {
    pub(crate) fn new(interval: u64, origin: u64) -> Reports {
        Reports {
            interval,
            origin,
            next: origin + interval,
        }
    }

    /// When the next report is due.
    pub(crate) fn next(&self) -> Option<u64> {
        (self.interval != 0).then_some(self.next)
    }

    /// Print the report if one is due at `now`.
    pub(crate) fn maybe<S>(&mut self, now: u64, flows: &mut [Flow<S>], out: &mut dyn Write) {
        if self.interval != 0 && now >= self.next {
            self.print(now, flows, out);
        }
    }

    /// At the end of the test: the last, partial, interval (unless it is too short to
    /// say anything, under a tenth of an interval).
    pub(crate) fn finish<S>(&mut self, now: u64, flows: &mut [Flow<S>], out: &mut dyn Write) {
        let from = self.next.saturating_sub(self.interval);
        if self.interval != 0 && now > from && (now - from) * 10 >= self.interval {
            self.print(now, flows, out);
        }
    }

    fn print<S>(&mut self, now: u64, flows: &mut [Flow<S>], out: &mut dyn Write) {
        #[allow(clippy::cast_precision_loss)]
        let secs = |t: u64| t.saturating_sub(self.origin) as f64 / 1000.0;
        let (from, to) = (secs(self.next - self.interval), secs(now));
        if from == 0.0 {
            report::println(out, format_args!("{}", report::HEADER));
        }
        let mut sum = 0;
        for f in flows.iter_mut() {
            report::println(
                out,
                format_args!(
                    "{}",
                    Line {
                        id: Some(f.id),
                        from,
                        to,
                        bytes: f.interval,
                        role: ""
                    }
                ),
            );
            sum += f.interval;
            f.interval = 0;
        }
        if flows.len() > 1 {
            report::println(
                out,
                format_args!(
                    "{}",
                    Line {
                        id: None,
                        from,
                        to,
                        bytes: sum,
                        role: ""
                    }
                ),
            );
        }
        self.next = now + self.interval;
    }
}

/// The server's end-of-test report, as iperf3 prints it.
fn summary_text(s: &TestSummary, busy: f64) -> String {
    let mut t = String::new();
    let role = if s.sending { "sender" } else { "receiver" };
    let _ = writeln!(t, "{}", report::SEPARATOR);
    let _ = writeln!(t, "{}", report::HEADER);
    for &(id, bytes) in &s.streams {
        let _ = writeln!(
            t,
            "{}",
            Line {
                id: Some(id),
                from: 0.0,
                to: s.secs,
                bytes,
                role
            }
        );
    }
    if s.streams.len() > 1 {
        let _ = writeln!(
            t,
            "{}",
            Line {
                id: None,
                from: 0.0,
                to: s.secs,
                bytes: s.bytes(),
                role
            }
        );
    }
    let _ = writeln!(
        t,
        "CPU Utilization: local/{role} {busy:.1}% (awake), remote/{} {:.1}% ({:.1}%u/{:.1}%s)",
        if s.sending { "receiver" } else { "sender" },
        s.client.cpu_util[0],
        s.client.cpu_util[1],
        s.client.cpu_util[2]
    );
    t
}
