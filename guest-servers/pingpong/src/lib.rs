//! The pong side of the pingpong protocol (`compart_proto::pingpong`): a
//! [`Handler`] per channel that answers each ping in sequence with a pong and its
//! payload echoed, refuses a wrong ping (out of sequence, bad checksum, unknown opcode)
//! with an error reply and serves on, and closes the channel on stop, or on a one-way
//! message that is not stop (there is no reply to refuse it with).
//!
//! The logic runs on any endpoint, so it is tested here on the host; the image
//! (`main.rs`) runs it inside `firmware::server`.
#![no_std]
#![forbid(unsafe_code)]

use compart_channel::{Notifier, Request};
use compart_kit::server::{Close, Handler, Link};
use compart_proto::pingpong::{self, Refusal, Reply};

/// One channel's pong: the next sequence number it expects, and what it did.
#[derive(Debug, Default)]
pub struct Pong {
    expected: u64,
    served: u64,
    refused: u64,
}

impl Pong {
    /// A pong that expects ping 0 next.
    pub fn new() -> Pong {
        Pong {
            expected: 0,
            served: 0,
            refused: 0,
        }
    }

    /// Pings answered with a pong.
    pub fn served(&self) -> u64 {
        self.served
    }

    /// Requests answered with a refusal.
    pub fn refused(&self) -> u64 {
        self.refused
    }
}

impl<N: Notifier> Handler<N> for Pong {
    fn on_request(&mut self, link: &mut Link<'_, N>, req: Request) -> Result<(), Close> {
        let refusal = match pingpong::Request::decode(req.opcode(), req.is_oneway(), req.inline()) {
            Ok(pingpong::Request::Stop) => return Err(Close::Done),
            Ok(pingpong::Request::Ping { seq }) if seq == self.expected => None,
            Ok(pingpong::Request::Ping { .. }) => Some(Refusal::BadSequence),
            Err(e) => Some(Refusal::of(e)),
        };
        if let Some(r) = refusal {
            if req.is_oneway() {
                return Err(Close::Violation("a one-way message that is not stop"));
            }
            self.refused += 1;
            let (status, inline) = Reply::Refused(r).encode();
            return link.reply(req, status, inline, &[]);
        }
        let seq = self.expected;
        let n = req.payload_len();
        self.expected += 1;
        self.served += 1;
        let (status, inline) = Reply::Pong { seq }.encode();
        // The echo is the request's own buffer, answered in place: no byte is copied.
        Ok(link
            .endpoint
            .reply_with(req, status, inline, n, |_| Ok(n))?)
    }
}

#[cfg(test)]
mod tests {
    extern crate std;

    use std::string::String;
    use std::vec::Vec;

    use compart_channel::host::SharedMemory;
    use compart_channel::{initialize, Endpoint, NoKick, PairConfig, PairLayout, Side};
    use compart_kit::server::{Event, Peer, Role, Server};
    use compart_proto::pingpong::{fill_payload, payload_matches, Request, OP_PING};

    use super::*;

    /// A pong server on one host-side channel, and the requester's endpoint.
    fn setup() -> (SharedMemory, Endpoint<NoKick>, Server<NoKick, Pong>) {
        let config = PairConfig::new(64, 16, 256);
        let size = PairLayout::new(&config).unwrap().size();
        let mem = SharedMemory::create("pong-test", size.next_multiple_of(4096)).unwrap();
        initialize(&mem.region(), &config).unwrap();
        let ping = Endpoint::attach(mem.region(), Side::A, NoKick).unwrap();
        let ep = Endpoint::attach(mem.region(), Side::B, NoKick).unwrap();
        let mut server = Server::new();
        let peer = Peer {
            index: 0,
            name: String::from("ping"),
            role: Role::App,
        };
        server.add(peer, ep, Pong::new());
        (mem, ping, server)
    }

    fn poll(server: &mut Server<NoKick, Pong>) -> Vec<String> {
        let mut closed = Vec::new();
        server.poll(&mut |e| {
            if let Event::Closed { why, handler, .. } = e {
                closed.push(std::format!(
                    "{why}: {} served, {} refused",
                    handler.served(),
                    handler.refused()
                ));
            }
        });
        closed
    }

    fn reply_of(ping: &mut Endpoint<NoKick>, payload: &mut [u8]) -> Reply {
        let r = ping.poll_reply().unwrap().expect("a reply");
        let got = Reply::decode(r.status(), r.inline()).unwrap();
        let n = ping.read_reply_payload(&r, payload).unwrap();
        assert_eq!(n, payload.len());
        ping.free(r).unwrap();
        got
    }

    #[test]
    fn pings_in_sequence_get_pongs_with_their_payload_echoed() {
        let (_m, mut ping, mut server) = setup();
        for seq in 0..40u64 {
            let mut out = [0; 100];
            fill_payload(seq, &mut out);
            let (op, inline) = Request::Ping { seq }.encode();
            ping.send_request(op, inline, &out).unwrap();
            poll(&mut server);
            let mut back = [0; 100];
            assert_eq!(reply_of(&mut ping, &mut back), Reply::Pong { seq });
            assert!(payload_matches(seq, &back));
        }
    }

    #[test]
    fn wrong_pings_are_refused_for_their_reason_and_the_sequence_goes_on() {
        let (_m, mut ping, mut server) = setup();
        let (op, inline) = Request::Ping { seq: 5 }.encode();
        ping.send_request(op, inline, &[]).unwrap();
        let (op, mut bad_sum) = Request::Ping { seq: 0 }.encode();
        bad_sum[1] ^= 4;
        ping.send_request(op, bad_sum, &[]).unwrap();
        ping.send_request(77, [0; 5], &[]).unwrap();
        let (_, reserved) = Request::Ping { seq: 0 }.encode();
        let mut reserved = reserved;
        reserved[3] = 1;
        ping.send_request(OP_PING, reserved, &[]).unwrap();
        let (op, inline) = Request::Ping { seq: 0 }.encode();
        ping.send_request(op, inline, &[]).unwrap();
        assert!(poll(&mut server).is_empty());
        for want in [
            Reply::Refused(Refusal::BadSequence),
            Reply::Refused(Refusal::BadChecksum),
            Reply::Refused(Refusal::UnknownOpcode),
            Reply::Refused(Refusal::Malformed),
            Reply::Pong { seq: 0 },
        ] {
            assert_eq!(reply_of(&mut ping, &mut []), want);
        }
        let (op, inline) = Request::Stop.encode();
        ping.send_oneway(op, inline).unwrap();
        assert_eq!(poll(&mut server), ["done: 1 served, 4 refused"]);
    }

    #[test]
    fn a_one_way_message_that_is_not_stop_closes_the_channel() {
        let (_m, mut ping, mut server) = setup();
        ping.send_oneway(OP_PING, [0; 5]).unwrap();
        assert_eq!(
            poll(&mut server),
            ["protocol violation: a one-way message that is not stop: 0 served, 0 refused"]
        );
        assert!(server.is_empty());
    }
}
