//! The `mono` image: an application over compart-sockets' `Net` on a stack linked
//! into the same guest ([`mono::LocalNet`]).
//!
//! - **With a NIC** (role `driver`): the whole stack — the driver, ip and tcp servers'
//!   libraries, connected by two channel pairs in this guest's memory
//!   (`channel::local_pair`, the same protocol and copies as between guests, no
//!   doorbells) — runs in one loop with the application, no sleep between the layers:
//!   the monolithic baseline. ip's address comes from `addr=A/LEN` and `gw=G` (the
//!   topology gives an ip server's configuration only to a guest of role `ip`).
//! - **Without a NIC**, with a channel to a `pf` or `ip` server (role `tcp`): only the
//!   tcp core runs here, under the application, over the decomposed stack below.
//!
//! Command line: `app=echo|iperf3` (default `echo`), `port=P` (default 7 for echo,
//! 5201 for iperf3); `sockets=N`, `buf=KIB`, `offload=false` as for the tcp server;
//! `rx=N` as for the driver; `poll=US` overrides the placement's poll budget.
#![no_std]
#![no_main]
#![forbid(unsafe_code)]

extern crate alloc;

use alloc::string::String;
use core::time::Duration;

use ::driver::Driver;
use compart_channel::{Endpoint, NoKick, Notifier, PairConfig};
use compart_firmware::channel::{self, Doorbell};
use compart_firmware::cmdline::{self, Args};
use compart_firmware::println;
use compart_firmware::server::{Event, Peer, Role, Server};
use compart_firmware::virtio::{self, GuestRam, MmioWindow};
use compart_firmware::{placement, ring0, time, BootInfo};
use compart_proto::packet;
use ip::{IpServer, Settings};
use mono::{Engine, LocalNet};
use tcp::{ConfigQuery, Iface, Instant, Limits, Tcp};

compart_firmware::entry!(main);

/// The stack's clock for smoltcp: microseconds of the firmware's monotonic clock.
fn now() -> Instant {
    Instant::from_micros(i64::try_from(time::micros()).unwrap_or(i64::MAX))
}

/// A deadline of the application's millisecond clock ([`Engine::now_ms`]).
fn at_ms(ms: u64) -> time::Instant {
    time::at(compart_kit::clock::Instant::from_millis(ms))
}

fn earliest(a: Option<time::Instant>, b: Option<time::Instant>) -> Option<time::Instant> {
    match (a, b) {
        (Some(a), Some(b)) => Some(if a.tsc() <= b.tsc() { a } else { b }),
        (a, b) => a.or(b),
    }
}

/// smoltcp's next deadline, as an instant of the firmware's clock.
fn tcp_deadline<N: Notifier>(tcp: &mut Tcp<N>) -> Option<time::Instant> {
    tcp.poll_delay(now())
        .map(|d| time::Instant::now() + Duration::from_micros(d.total_micros()))
}

/// The whole stack in this guest.
struct Whole {
    driver: Server<NoKick, Driver<GuestRam, MmioWindow>>,
    ip: IpServer<NoKick>,
    tcp: Tcp<NoKick>,
    poll_us: Option<u32>,
    idle_since: time::Instant,
}

impl Engine for Whole {
    type Notifier = NoKick;

    fn tcp(&mut self) -> &mut Tcp<NoKick> {
        &mut self.tcp
    }

    fn step(&mut self) -> bool {
        let mut busy = self.driver.poll(&mut report);
        busy |= self.ip.poll(time::clock());
        if let Some((peer, why)) = self.ip.take_closed().first() {
            panic!("mono: ip dropped its {peer}: {why:?}");
        }
        busy |= self.tcp.poll(now());
        if let Some(e) = self.tcp.device().error() {
            panic!("mono: tcp's channel to ip broke: {e:?}");
        }
        if busy {
            self.idle_since = time::Instant::now();
        }
        busy
    }

    fn idle(&mut self, deadline_ms: Option<u64>) {
        // Poll by whole passes for the budget (as the driver server does), so that
        // the device's work is seen as soon as it comes; then arm the device and sleep.
        let budget = u64::from(self.poll_us.unwrap_or_else(|| placement::poll_us(0)));
        if self.idle_since.elapsed() < Duration::from_micros(budget) {
            core::hint::spin_loop();
            return;
        }
        self.idle_since = time::Instant::now();
        if self.driver.before_sleep() {
            return;
        }
        // The layers' channels in this guest: a message left by a later layer in the
        // pass is work for an earlier one.
        let internal = self.ip.sleep_set().iter_mut().chain(self.tcp.sleep_set());
        for ep in internal {
            if ep.has_incoming().unwrap_or(true) {
                return;
            }
        }
        let deadline = earliest(
            earliest(
                tcp_deadline(&mut self.tcp),
                self.ip.ip().next_deadline().map(time::at),
            ),
            deadline_ms.map(at_ms),
        );
        match deadline {
            Some(d) => time::halt_until(d),
            None => ring0::halt(),
        }
        self.idle_since = time::Instant::now();
    }

    fn now_ms(&self) -> u64 {
        time::clock().millis()
    }
}

fn report(event: Event<'_, Driver<GuestRam, MmioWindow>>) {
    match event {
        Event::Closed {
            peer, why, handler, ..
        } => {
            println!("mono: driver's {peer} closed ({why}); {}", handler.stats());
            panic!("mono: the driver's channel to ip closed");
        }
        Event::Throttled { peer } => println!("mono: driver's {peer} throttled"),
        Event::Resumed { peer } => println!("mono: driver's {peer} resumed"),
    }
}

/// Only the tcp core here, over a pf or ip server in another guest.
struct Upper {
    tcp: Tcp<Doorbell>,
    poll_us: Option<u32>,
}

impl Engine for Upper {
    type Notifier = Doorbell;

    fn tcp(&mut self) -> &mut Tcp<Doorbell> {
        &mut self.tcp
    }

    fn step(&mut self) -> bool {
        let busy = self.tcp.poll(now());
        if let Some(e) = self.tcp.device().error() {
            panic!("mono: channel to ip broke: {e:?}");
        }
        busy
    }

    fn idle(&mut self, deadline_ms: Option<u64>) {
        let deadline = earliest(tcp_deadline(&mut self.tcp), deadline_ms.map(at_ms));
        // A broken channel is found by the next pass.
        let _ = match self.poll_us {
            Some(us) => channel::wait_for_any_polling(self.tcp.sleep_set(), us, deadline),
            None => channel::wait_for_any(self.tcp.sleep_set(), deadline),
        };
    }

    fn now_ms(&self) -> u64 {
        time::clock().millis()
    }
}

/// The tcp core's settings from ip's configuration and the command line.
fn tcp_core<N: Notifier>(ep: Endpoint<N>, c: packet::Config, args: &Args<'_>) -> Tcp<N> {
    let iface = Iface::from_config(&c, args.value::<bool>("offload").unwrap_or(true));
    let [a, b, cc, d] = c.address;
    println!(
        "mono: tcp at {a}.{b}.{cc}.{d}/{}, mtu {}, offloads {:#x}: checksums {}, {}",
        c.prefix_len,
        c.mtu,
        c.offloads,
        if iface.tx_checksum_offload {
            "left to the link"
        } else {
            "computed here"
        },
        if iface.tso {
            "TSO (segments of up to 64 KiB)"
        } else {
            "MTU-sized segments"
        }
    );
    Tcp::new(ep, iface, limits(args), now(), time::Instant::now().tsc())
}

fn limits(args: &Args<'_>) -> Limits {
    Limits::from_args(
        args.value("sockets"),
        args.value("buf"),
        args.value("backlog"),
        args.value("handshake"),
    )
}

fn local_peer(index: usize, name: &str, role: Role) -> Peer {
    Peer {
        index,
        name: String::from(name),
        role,
    }
}

/// The whole stack on the guest's first NIC.
fn whole(info: &'static BootInfo, args: &Args<'_>) -> Whole {
    let nic = &info.nics()[0];
    let poll_us: Option<u32> = args.value("poll");
    let settings = Settings::with_override(
        Settings::from_boot_info(&info.ipv4),
        args.value("addr"),
        args.value("gw"),
    )
    .unwrap_or_else(|e| panic!("mono: ip settings (addr=A/LEN gw=G): {e}"));
    // The channels between the layers: as the topologies give them between guests.
    let config = PairConfig::new(64, 16, 65600);
    let (drv_ep, ip_drv_ep) =
        channel::local_pair(&config).unwrap_or_else(|e| panic!("mono: driver–ip channel: {e:?}"));
    let (ip_tcp_ep, mut tcp_ep) =
        channel::local_pair(&config).unwrap_or_else(|e| panic!("mono: ip–tcp channel: {e:?}"));
    // The device's receive buffers take the heap but what the sockets need.
    let l = limits(args);
    let keep_free = (l.sockets * (l.rx_buffer + l.tx_buffer)) as u64 + (2 << 20);
    let window = u16::try_from(config.max_outstanding).unwrap_or(u16::MAX);
    let rx: Option<u16> = args.value("rx");
    let net = virtio::open_net(nic, rx, window, keep_free)
        .unwrap_or_else(|e| panic!("mono: NIC at {:#x}: {e}", nic.mmio_gpa));
    let (rx_bufs, tx_slots) = net.buffers();
    let driver = Driver::new(net, nic.mac, nic.mtu);
    let link = driver.link();
    println!(
        "mono: driver: mtu {} offloads {:#x}, {rx_bufs} receive buffers, {tx_slots} transmit slots; ip {}/{}",
        link.mtu,
        link.offloads,
        settings.address(),
        settings.cidr.prefix_len()
    );
    let mut drv = Server::new();
    drv.add(local_peer(0, "ip (local)", Role::Ip), drv_ep, driver);
    let mut ip = IpServer::new(
        ip::Ip::new(settings, ip::Limits::default()),
        (local_peer(0, "driver (local)", Role::Driver), ip_drv_ep),
        Some((local_peer(1, "tcp (local)", Role::Tcp), ip_tcp_ep)),
    );
    // tcp asks ip for the interface while the driver and ip run.
    let mut q = ConfigQuery::new();
    let c = loop {
        let busy = drv.poll(&mut report) | ip.poll(time::clock());
        match q.poll(&mut tcp_ep, time::clock().millis()) {
            Ok(Some(c)) => break c,
            Ok(None) => {}
            Err(e) => panic!("mono: ip–tcp channel: {e:?}"),
        }
        if !busy && !drv.before_sleep() {
            // The link comes up on the device's interrupt; ip's answers within a pass.
            time::halt_until(time::Instant::now() + Duration::from_millis(10));
        }
    };
    if let Some(odd) = q.odd_answer {
        println!("mono: ip answered Config with {odd:?} before the link was up");
    }
    let tcp = tcp_core(tcp_ep, c, args);
    Whole {
        driver: drv,
        ip,
        tcp,
        poll_us,
        idle_since: time::Instant::now(),
    }
}

/// The tcp core over the pf or ip server of another guest.
fn upper(args: &Args<'_>) -> Upper {
    let poll_us: Option<u32> = args.value("poll");
    let (peer, mut ep) = [Role::Pf, Role::Ip]
        .into_iter()
        .find_map(|r| channel::open_by_role(r).ok())
        .unwrap_or_else(|| panic!("mono: no NIC and no channel to a pf or ip server"));
    println!("mono: tcp only, over {peer} ({})", peer.role.name());
    let mut q = ConfigQuery::new();
    let c = loop {
        match q.poll(&mut ep, time::clock().millis()) {
            Ok(Some(c)) => break c,
            Ok(None) => {}
            Err(e) => panic!("mono: channel to ip: {e:?}"),
        }
        let _ = channel::wait_for_any(
            core::slice::from_mut(&mut ep),
            Some(time::Instant::now() + Duration::from_millis(10)),
        );
    };
    Upper {
        tcp: tcp_core(ep, c, args),
        poll_us,
    }
}

fn main(info: &'static BootInfo) -> i32 {
    let args = cmdline::args();
    let app: &str = args.value("app").unwrap_or("echo");
    let port: Option<u16> = args.value("port");
    let l = limits(&args);
    println!(
        "mono: app {app}, up to {} sockets of {} KiB + {} KiB",
        l.sockets,
        l.rx_buffer / 1024,
        l.tx_buffer / 1024
    );
    if info.nics().is_empty() {
        run(LocalNet::new(upper(&args)), app, port)
    } else {
        run(LocalNet::new(whole(info, &args)), app, port)
    }
}

/// Connections the echo application serves at once.
const ECHO_CONNECTIONS: usize = 16;

/// The console as a `fmt::Write`, for iperf3's reports.
struct Console;

impl core::fmt::Write for Console {
    fn write_str(&mut self, s: &str) -> core::fmt::Result {
        compart_firmware::print!("{s}");
        Ok(())
    }
}

fn run<E: Engine>(mut net: LocalNet<E>, app: &str, port: Option<u16>) -> i32 {
    match app {
        "echo" => {
            let port = port.unwrap_or(7);
            let mut echo =
                echo::Echo::new(&mut net, port, ECHO_CONNECTIONS as u32, ECHO_CONNECTIONS)
                    .unwrap_or_else(|e| panic!("mono: echo on {port}: {e:?}"));
            println!("mono: echo on port {port}");
            echo.run(&mut net, |_| false);
            0
        }
        "iperf3" => {
            // Without `mode=`, a server on `port`; otherwise iperf3's own arguments.
            let line = compart_firmware::boot_info().cmdline();
            let config = if cmdline::args().get::<&str>("mode").ok().flatten().is_none() {
                iperf3::Config::Server(iperf3::config::ServerConfig {
                    port: port.unwrap_or(5201),
                    ..iperf3::config::ServerConfig::default()
                })
            } else {
                iperf3::Config::parse(line).unwrap_or_else(|e| panic!("mono: iperf3: {e}"))
            };
            match config {
                iperf3::Config::Server(cfg) => {
                    let port = cfg.port;
                    let mut server = iperf3::server::Server::listen(&mut net, cfg)
                        .unwrap_or_else(|e| panic!("mono: iperf3 on {port}: {e}"));
                    println!("mono: iperf3 on port {port}");
                    match server.run(&mut net, &mut Console) {
                        Ok(()) => 0,
                        Err(e) => {
                            println!("mono: iperf3: {e}");
                            1
                        }
                    }
                }
                iperf3::Config::Client(cfg) => {
                    let seed = time::Instant::now().tsc();
                    match iperf3::client::run(&mut net, &cfg, seed, &mut Console) {
                        Ok(_) => 0,
                        Err(e) => {
                            println!("mono: iperf3: error - {e}");
                            1
                        }
                    }
                }
            }
        }
        other => panic!("mono: unknown app `{other}` (echo, iperf3)"),
    }
}
