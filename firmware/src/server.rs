//! The receive loop of a server guest (`compart_kit::server`, host-tested there), over
//! this guest's channels, sleeping through [`channel::wait_for_any`] when no channel has
//! work.

use alloc::vec::Vec;

pub use compart_kit::server::*;

use crate::channel::{self, Channel, Doorbell, OpenError};

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
