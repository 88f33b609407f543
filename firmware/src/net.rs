//! An application guest's network: the socket API of `compart_sockets` over the
//! channel to the posix server (the logic is `compart-net`'s, host-tested there).
//!
//! ```ignore
//! use compart_sockets::{Listener, Net, Stream};
//! let mut net = compart_firmware::net::open();
//! let mut l = net.listen(7, 8)?;
//! let (mut s, peer) = l.accept()?;
//! ```
//!
//! Waiting (a blocking call, [`Net::wait`](compart_sockets::Net::wait)) is
//! [`channel::wait_for_any`] on the posix channel: the guest polls or halts as its
//! placement says until posix replies or sends a readiness event, or the deadline.

use core::time::Duration;

use compart_abi::Role;

use crate::channel::{self, Channel, Doorbell};
use crate::time;

/// The firmware's clock and sleep, for [`compart_net`].
#[derive(Debug, Clone, Copy, Default)]
pub struct FirmwareSleep;

impl compart_net::Sleep<Doorbell> for FirmwareSleep {
    fn now_ms(&self) -> u64 {
        time::clock().millis()
    }

    fn sleep(&self, ep: &mut Channel, deadline_ms: Option<u64>) {
        let deadline = deadline_ms.map(|ms| {
            let left = ms.saturating_sub(self.now_ms());
            time::Instant::now() + Duration::from_millis(left)
        });
        // A broken channel shows at the caller's next poll.
        let _ = channel::wait_for_any(core::slice::from_mut(ep), deadline);
    }
}

/// The network over the posix server.
pub type PosixNet = compart_net::PosixNet<Doorbell, FirmwareSleep>;
/// A connection through posix.
pub type PosixStream = compart_net::PosixStream<Doorbell, FirmwareSleep>;
/// A listener through posix.
pub type PosixListener = compart_net::PosixListener<Doorbell, FirmwareSleep>;

/// The network over this guest's channel to the posix server (the peer of role
/// `posix`). Panics, naming the cause, if the topology gives the guest no such channel
/// or it cannot be opened.
///
/// The channel is hung up when the guest ends ([`channel::hang_up_on_exit`]): posix
/// then closes every socket the application still holds.
pub fn open() -> PosixNet {
    match channel::open_by_role(Role::Posix) {
        Ok((peer, ep)) => {
            channel::hang_up_on_exit(peer.index);
            PosixNet::new(ep, FirmwareSleep)
        }
        Err(channel::OpenError::NoSuchRole(_)) => panic!(
            "net: no channel to a posix server: the topology must connect this guest to a guest of role \"posix\""
        ),
        Err(e) => panic!("net: the channel to the posix server cannot be opened: {e:?}"),
    }
}
