//! The receive loop of a server guest (`compart_kit::server`, host-tested there), over
//! this guest's channels, sleeping through [`channel::wait_for_any`] when no channel has
//! work.

use alloc::vec::Vec;

pub use compart_kit::server::*;

use crate::channel::{self, Channel, Doorbell, OpenError};
use crate::placement;
use crate::time::Instant;

/// A server over every channel of this guest that opens, with `handler(peer, channel)`
/// as each one's handler; and the channels that could not be opened, with the reason.
pub fn serve_all<H: Handler<Doorbell>>(
    mut handler: impl FnMut(&Peer, &Channel) -> H,
) -> (Server<Doorbell, H>, Vec<(Peer, OpenError)>) {
    let (open, unusable) = channel::open_all();
    let mut server = Server::new();
    for (peer, ch) in open {
        let h = handler(&peer, &ch);
        server.add(peer, ch, h);
    }
    (server, unusable)
}

/// Serve until no channel is left, reporting every [`Event`] through `report`. When no
/// channel has work the server polls for `poll_us` (or as long as vCPU 0's placement
/// says, re-read at every wait, so a move takes effect at the next one), then sleeps
/// until a peer it can serve, or the VMM, kicks it.
pub fn run<H: Handler<Doorbell>>(
    server: &mut Server<Doorbell, H>,
    poll_us: Option<u32>,
    report: &mut dyn FnMut(Event<'_, H>),
) {
    server.run(|channels| idle(channels, poll_us), report);
}

/// The server's idle wait: the one place it sleeps.
fn idle(
    channels: &mut [Channel],
    poll_us: Option<u32>,
) -> Result<(), compart_channel::ChannelError> {
    match poll_us {
        Some(us) => channel::wait_for_any_polling(channels, us, None),
        None => channel::wait_for_any(channels, None),
    }
    .map(drop)
}

/// [`run`] for a server whose handlers have work beside their channels (a device's
/// rings, which `Handler::on_pass` serves): while it has a poll budget (`poll_us`, or
/// vCPU 0's placement) it polls by whole passes, so the device's work is seen as soon
/// as the channels'; then it asks every handler to arm its device
/// (`Handler::before_sleep`), and sleeps only if none found work meanwhile. The
/// device's interrupt, like a doorbell, ends the sleep.
pub fn run_with_devices<H: Handler<Doorbell>>(
    server: &mut Server<Doorbell, H>,
    poll_us: Option<u32>,
    report: &mut dyn FnMut(Event<'_, H>),
) {
    let mut idle_since = Instant::now();
    while !server.is_empty() {
        if server.poll(report) {
            idle_since = Instant::now();
            continue;
        }
        let budget = u64::from(poll_us.unwrap_or_else(|| placement::poll_us(0)));
        if idle_since.elapsed() < core::time::Duration::from_micros(budget) {
            core::hint::spin_loop();
            continue;
        }
        if !server.before_sleep() {
            // The budget is spent: sleep at once.
            let _ = channel::wait_for_any_polling(server.sleep_set(), 0, None);
        }
        idle_since = Instant::now();
    }
}
