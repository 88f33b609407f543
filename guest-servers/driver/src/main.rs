//! The driver server: drives the guest's first NIC (a virtio-net device, see
//! `firmware::virtio`) and exchanges its frames with the ip server over the channel to
//! the first guest of role `ip` (the library's [`Driver`]).
//!
//! Command line (all optional):
//!
//! - `rx=N`: receive buffers of 65 600 bytes each (default: as many as the heap holds,
//!   keeping 1 MiB, up to the device's queue size);
//! - `tx=N`: transmit slots (default: the channel's `max_outstanding`, ip's window);
//! - `poll=US`: poll this long before sleeping instead of what the placement page says.
//!
//! It prints `driver: link up …` once the device runs, and its counters when the
//! channel to ip closes; then it resets the device and exits 0.
#![no_std]
#![no_main]
#![forbid(unsafe_code)]

extern crate alloc;

use ::driver::Driver;
use compart_firmware::cmdline;
use compart_firmware::server::{self, Event, Server};
use compart_firmware::virtio::{self, net::RX_BUFFER_SIZE};
use compart_firmware::{abi, channel, println, BootInfo};

compart_firmware::entry!(main);

/// Heap left to everything but the device's arena.
const KEEP_FREE: u64 = 1 << 20;

fn main(info: &'static BootInfo) -> i32 {
    let args = cmdline::args();
    let rx: Option<u16> = args.value("rx");
    let tx: Option<u16> = args.value("tx");
    let poll: Option<u32> = args.value("poll");
    let Some(nic) = info.nics().first() else {
        panic!("driver: the topology gives this guest no NIC");
    };
    let (peer, ch) = channel::open_by_role(abi::Role::Ip)
        .unwrap_or_else(|e| panic!("driver: no usable channel to an ip server: {e:?}"));
    let window = u16::try_from(ch.layout().config().max_outstanding).unwrap_or(u16::MAX);
    let tx = tx.unwrap_or(window);
    let net = virtio::open_net(nic, rx, tx, KEEP_FREE)
        .unwrap_or_else(|e| panic!("driver: NIC at {:#x}: {e}", nic.mmio_gpa));
    let (rx_bufs, tx_slots) = net.buffers();
    let features = net.transport().features();
    let driver = Driver::new(net, nic.mac, nic.mtu);
    let link = driver.link();
    let m = link.mac;
    println!(
        "driver: link up: mac {:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x} mtu {} offloads {:#x} \
         (features {features:#x}), {rx_bufs} receive buffers of {RX_BUFFER_SIZE} B, \
         {tx_slots} transmit slots, vector {:#x}; to ip over {peer}",
        m[0], m[1], m[2], m[3], m[4], m[5], link.mtu, link.offloads, nic.vector,
    );
    let mut srv = Server::new();
    srv.add(peer, ch, driver);
    server::run_with_devices(&mut srv, poll, &mut |event| match event {
        Event::Closed {
            peer, why, handler, ..
        } => {
            println!("driver: {peer} closed ({why})");
            println!("driver: {}", handler.stats());
            handler.nic().transport().reset();
        }
        Event::Throttled { peer } => println!("driver: {peer} throttled: its reply queue is full"),
        Event::Resumed { peer } => println!("driver: {peer} resumed"),
    });
    0
}
