//! What the pf server counted: packets passed and refused each way, each refusal under
//! its reason, and what the relay saw of its peers. The tests read the struct; the image
//! prints the counters that are not zero (`name=value …`).
use core::fmt;

compart_kit::counters! {
    /// Per-reason counts of the pf server (see the module documentation).
    pub struct Counters {
        /// Packets from ip let up to tcp.
        in_passed,
        /// …of which on a tracked connection.
        in_tracked,
        /// Packets from tcp let down to ip.
        out_passed,
        /// …of which on a tracked connection.
        out_tracked,
        /// ICMP errors let through because they quote a packet of a tracked connection.
        related,
        /// Connections the table started tracking.
        conn_created,
        /// Connections the table let go because they timed out.
        conn_expired,
        /// Inbound packets refused by a rule or the default policy.
        in_denied_rule,
        /// Outbound packets refused by a rule or the default policy.
        out_denied_rule,
        /// Inbound packets that are not valid IPv4 or whose transport header does not fit.
        in_malformed,
        /// Outbound packets that are not valid IPv4 or whose transport header does not fit.
        out_malformed,
        /// Inbound fragments (pf filters whole datagrams only).
        in_fragment,
        /// Outbound fragments.
        out_fragment,
        /// Inbound connections refused because the table was full.
        in_table_full,
        /// Outbound connections refused because the table was full.
        out_table_full,
        /// Requests that did not decode, or came from the wrong side (`Send` from ip…).
        bad_requests,
        /// One-way messages (the packet protocol has none); ignored.
        oneway_ignored,
        /// Replies that did not decode or do not answer their request's kind.
        bad_replies,
        /// Replies to no request pf relayed (late, after the requester's channel closed).
        orphan_replies,
        /// Packets larger than the other channel's buffers.
        too_large,
        /// Requests answered `NoRoom` because the other channel refused the relayed request.
        relay_refused,
        /// Requests answered because the other side's channel is gone.
        peer_gone,
        /// `Config` requests relayed to ip.
        config_relayed,
        /// Replies `Dropped` that ip or tcp gave to relayed packets.
        peer_dropped,
    }
}

impl fmt::Display for Counters {
    /// The counters that are not zero, as `name=value` separated by spaces; `none`
    /// when all are.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if !self.write_nonzero(f)? {
            f.write_str("none")?;
        }
        Ok(())
    }
}
