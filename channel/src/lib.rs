//! Fast-path channels: the data path between compart's servers.
//!
//! A *channel pair* connects two endpoints, side [`Side::A`] and side [`Side::B`], through
//! one shared region (a memfd mapped into two guests, or into two host threads or
//! processes). Each side can send requests to the other and serve the other's requests; a
//! request's payload travels in the requester's pool and comes back with the reply. No
//! system call and no VM exit is needed while both sides are busy: a receiver polls while it
//! has work, and a sender rings the peer's doorbell only when the peer sleeps.
//!
//! # Layout
//!
//! The region holds a header and one area per side. Everything is addressed by offsets from
//! the region's base (the two sides map it at different addresses); the offsets are computed
//! from the three sizes in the header ([`PairConfig`]) by [`PairLayout::new`], never read
//! from the region.
//!
//! ```text
//!  offset 0   ┌────────────────────────────────────────────────┐
//!             │ header: magic, version, header len, total len, │ 256 B, written once by
//!             │ queue_depth, max_outstanding, buf_size          │ initialize(); magic last
//!             ├──────────────── area of side A ─────────────────┤
//!             │ notification area: state, sleeps, kicks         │ 128 B
//!             │ request queue  B → A   tail │ head │ slots[qd]  │ 128 + 128 + 64·qd
//!             │ reply queue    B → A   tail │ head │ slots[mo]  │ 128 + 128 + 64·mo
//!             │ request database of A  entries[mo]              │ 64·mo
//!             │ pool of A (page aligned)  buffers[mo]           │ buf_size·mo
//!             ├──────────────── area of side B ─────────────────┤
//!             │ ... the same, with A and B swapped ...          │
//!             └────────────────────────────────────────────────┘
//!  qd = queue_depth, mo = max_outstanding; each `tail`, `head` and notification area has
//!  128 bytes to itself, so that data written by different sides never share a line.
//! ```
//!
//! A side's area holds what it *receives* (its two queues and its notification area) and
//! what it *owns* (its request database and pool). Request-database entry `i` and pool
//! buffer `i` go together: allocating a request id allocates its buffer.
//!
//! # Protocol
//!
//! ```text
//!        side A (requester)                                   side B (server)
//!  send_request(op, inline, payload)
//!    id = db.alloc()          (entry i, buffer i)
//!    copy payload → pool A[i]
//!    push {id, op, off, len} ──── request queue of B ────► poll_request() → Request
//!                                                          read_request_payload(pool A[i])
//!                                                          reply(req, status, data)
//!    poll_reply() → Reply ◄────── reply queue of A ─────── (data → pool A[i])
//!    read_reply_payload(pool A[i])
//!    free(reply)              (entry i, buffer i free again)
//! ```
//!
//! * *Payloads in place.* A request can be built directly in its pool buffer
//!   ([`Endpoint::send_request_with`], through a [`PayloadMut`]), a reply in the request's
//!   buffer ([`Endpoint::reply_with`]), and a received payload ([`Payload`], from
//!   [`Endpoint::request_payload`] or [`Endpoint::reply_payload`]) passed on into another
//!   channel with one copy, pool to pool ([`Endpoint::forward`], [`Endpoint::reply_from`]).
//!   Copies of [`BULK_COPY_MIN`](region::BULK_COPY_MIN) bytes or more use `rep movsb` on
//!   x86_64. The pools stay shared memory the peer may write at any time, so safe code
//!   never gets a `&[u8]` into them: bytes are copied in and out, always inside the buffer.
//! * The queues are single-producer single-consumer rings of 64-byte messages ([`wire`]).
//!   A message is published by a *lap tag* in its own slot, written last: the receiver
//!   polls the next slot, so a message costs one cache-line transfer ([`ring`]). A message
//!   is visible to the peer as soon as the send returns.
//! * A reply never waits for space: the reply queue a side receives on has
//!   `max_outstanding` slots, as many as that side can have requests outstanding.
//! * *Kick only when the receiver sleeps* ([`notify`]): a receiver out of work stores
//!   `SLEEPING`, fences, re-checks its queues and only then blocks in the embedder's
//!   [`Waiter`]; a sender writes the message, fences, and calls the embedder's [`Notifier`]
//!   only if it sees `SLEEPING` (and wins the CAS to `WAKING`). The loom model in
//!   `tests/loom.rs` checks that neither a message nor a wake-up is lost. The sender's
//!   fence-and-check is deferred to its idle time (a few empty polls, a flush, a wait, a
//!   full queue, or every [`KICK_CHECK_EVERY`] messages): a full fence waits for the stores
//!   before it to reach the peer, so it is kept off the message's critical path; a side that
//!   stops sending and neither polls nor waits calls [`Endpoint::flush`].
//! * *A hostile peer cannot hurt us.* Every index, offset, length and id read from the
//!   region is checked before it is used. Every access is atomic, volatile or a `rep movsb`
//!   (never through a Rust reference) and bounds-checked: once, when an endpoint attaches, for the rings and the request
//!   database (whose slots and entries are then found from this side's private indices
//!   only), at each access for everything else. A failed check returns [`ChannelError::Corrupt`] and marks the endpoint broken
//!   ([`ChannelError::Broken`] from then on); there is no panic and no out-of-bounds access.
//!   What a hostile peer *can* do is stop answering, or send wrong data inside bounds.
//! * *Restarts.* Ring indices and request databases live in the region, so an endpoint that
//!   attaches again continues where its predecessor stopped; [`Endpoint::outstanding`] lists
//!   the requests to [`resubmit`](Endpoint::resubmit) or [`abandon`](Endpoint::abandon).
//!
//! # Use
//!
//! ```
//! # use compart_channel::*;
//! # #[repr(align(4096))] struct Page([u8; 4096]);
//! let config = PairConfig::new(64, 16, 256);
//! let size = PairLayout::new(&config)?.size();
//! let mut mem: Vec<Page> = (0..size.div_ceil(4096)).map(|_| Page([0; 4096])).collect();
//! // SAFETY: `mem` outlives the region and is only used through it.
//! let region = unsafe { Region::from_raw(mem.as_mut_ptr().cast(), size) }?;
//! initialize(&region, &config)?; // once, by the creator of the region
//!
//! let mut client = Endpoint::attach(region, Side::A, NoKick)?;
//! let mut server = Endpoint::attach(region, Side::B, NoKick)?;
//!
//! let id = client.send_request(7, [1, 2, 3, 4, 5], b"ping")?;
//! client.flush()?;
//! let req = server.poll_request()?.expect("a request");
//! let mut buf = [0u8; 4];
//! server.read_request_payload(&req, &mut buf)?;
//! server.reply(req, 0, [0; 5], b"pong")?;
//! server.flush()?;
//! let reply = client.poll_reply()?.expect("a reply");
//! assert_eq!(reply.id(), id);
//! client.read_reply_payload(&reply, &mut buf)?;
//! assert_eq!(&buf, b"pong");
//! client.free(reply)?;
//! # Ok::<(), ChannelError>(())
//! ```
//!
//! A server between two channels passes a request on with one copy, and answers it when the
//! next hop has:
//!
//! ```
//! # use compart_channel::*;
//! # #[repr(align(4096))] struct Page([u8; 4096]);
//! # fn pair() -> Result<(Endpoint<NoKick>, Endpoint<NoKick>), ChannelError> {
//! #     let config = PairConfig::new(64, 16, 2048);
//! #     let size = PairLayout::new(&config)?.size();
//! #     let mem: &'static mut [Page] = Vec::leak((0..size.div_ceil(4096)).map(|_| Page([0; 4096])).collect());
//! #     // SAFETY: `mem` is leaked, so it outlives the region, and is only used through it.
//! #     let region = unsafe { Region::from_raw(mem.as_mut_ptr().cast(), size) }?;
//! #     initialize(&region, &config)?;
//! #     Ok((Endpoint::attach(region, Side::A, NoKick)?, Endpoint::attach(region, Side::B, NoKick)?))
//! # }
//! let (mut client, mut up) = pair()?; // channel X: client → this server
//! let (mut down, mut next) = pair()?; // channel Y: this server → the next one
//!
//! // The client builds its request in its pool buffer.
//! client.send_request_with(1, [0; 5], 1500, |buf| {
//!     buf.write(0, b"header")?;
//!     buf.fill(6, 1494, b'.')?;
//!     Ok(1500)
//! })?;
//! let req = up.poll_request()?.expect("a request");
//! let mut header = [0u8; 6]; // parse a private copy, never the pool
//! up.request_payload(&req)?.read(0, &mut header)?;
//! let id = down.forward(2, *req.inline(), &up.request_payload(&req)?)?; // one copy X → Y
//!
//! let hop = next.poll_request()?.expect("the forwarded request");
//! assert_eq!(hop.payload_len(), 1500);
//! next.reply(hop, 0, [0; 5], &[])?;
//! let done = down.poll_reply()?.expect("the next hop's reply");
//! assert_eq!(done.id(), id);
//! down.free(done)?;
//! up.reply(req, 0, [0; 5], &[])?;
//! # Ok::<(), ChannelError>(())
//! ```
//!
//! With the `std` feature, [`host`] provides memfd regions and eventfd notifiers for host
//! threads and processes.

#![no_std]
#![warn(missing_docs)]

#[cfg(feature = "std")]
extern crate std;

pub mod db;
mod endpoint;
mod error;
pub mod layout;
pub mod notify;
pub mod pool;
pub mod region;
pub mod ring;
pub mod wire;

#[cfg(feature = "std")]
pub mod host;

pub use db::RequestId;
pub use endpoint::{
    counters, occupancy, totals, Counters, Endpoint, Occupancy, Payload, PayloadMut, Reply,
    Request, Totals, KICK_CHECK_EVERY, KICK_CHECK_IDLE_POLLS,
};
pub use error::{ChannelError, Corruption};
pub use layout::{initialize, PairConfig, PairLayout, MAGIC, VERSION};
pub use notify::{NoKick, Notifier, SpinWait, Waiter};
pub use region::Region;
pub use wire::{Message, INLINE_WORDS};

/// One of the two endpoints of a channel pair.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Side {
    /// The first endpoint.
    A,
    /// The second endpoint.
    B,
}

impl Side {
    /// The other side.
    pub fn peer(self) -> Side {
        match self {
            Side::A => Side::B,
            Side::B => Side::A,
        }
    }

    pub(crate) fn index(self) -> usize {
        match self {
            Side::A => 0,
            Side::B => 1,
        }
    }
}
