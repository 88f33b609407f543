//! What the ip server counted: every frame and packet it took, made, or dropped, each
//! drop under its reason. The tests read the struct; the image prints the counters that
//! are not zero (`name=value …`).
use core::fmt;

compart_kit::counters! {
    /// Per-reason counts of the ip server (see the module documentation).
    pub struct Counters {
        /// Frames received from the driver.
        rx_frames,
        /// Frames shorter than an Ethernet header.
        rx_runt,
        /// Frames that arrived before the driver reported the link.
        rx_link_down,
        /// Frames for another MAC address (or a multicast group).
        rx_not_for_us,
        /// Frames from a multicast, broadcast or our own MAC address.
        rx_bad_src_mac,
        /// Frames of an EtherType other than IPv4 and ARP.
        rx_unknown_ethertype,
        /// Frames whose offload metadata does not fit the frame.
        rx_bad_meta,
        /// ARP packets received.
        arp_rx,
        /// ARP packets too short, or not Ethernet/IPv4, or of an unknown operation.
        arp_malformed,
        /// ARP packets from a non-unicast sender.
        arp_bad_sender,
        /// ARP packets claiming our address from another MAC address.
        arp_conflict,
        /// ARP requests for another address.
        arp_not_for_us,
        /// ARP replies sent.
        arp_replies_sent,
        /// ARP requests sent (gratuitous ones included).
        arp_requests_sent,
        /// Neighbours learnt or refreshed.
        arp_learnt,
        /// Cache entries pushed out to make room.
        arp_evicted,
        /// Packets dropped because their next hop did not answer ARP.
        arp_unresolved,
        /// Packets dropped because too many were waiting for ARP.
        arp_pending_full,
        /// IPv4 packets received.
        ip_rx,
        /// IPv4 packets too short, of another version, or with inconsistent lengths.
        ip_malformed,
        /// IPv4 packets whose header checksum is wrong.
        ip_bad_checksum,
        /// IPv4 packets from a source that cannot send (ours, broadcast, multicast, …).
        ip_bad_src,
        /// IPv4 packets for another host.
        ip_not_for_us,
        /// IPv4 packets to a broadcast or multicast address.
        ip_broadcast,
        /// Fragments received.
        frag_rx,
        /// Datagrams reassembled.
        frag_reassembled,
        /// Fragments that are inconsistent (lengths, offsets, past 64 KiB).
        frag_malformed,
        /// Fragments dropped: no reassembly slot or buffer bytes left.
        frag_no_room,
        /// Partial datagrams dropped after the reassembly timeout.
        frag_timeout,
        /// Fragments sent.
        frag_tx,
        /// ICMP messages received.
        icmp_rx,
        /// ICMP messages with a bad checksum or too short.
        icmp_malformed,
        /// Echo requests answered.
        icmp_echo_replied,
        /// ICMP messages ip does not answer and no upper layer takes.
        icmp_unhandled,
        /// ICMP errors sent (protocol or port unreachable).
        icmp_errors_sent,
        /// ICMP errors not sent: over the rate limit.
        icmp_errors_limited,
        /// Packets for a protocol nobody serves.
        no_protocol,
        /// Packets handed to the upper layer.
        up_delivered,
        /// Delivered packets the upper layer dropped.
        up_dropped,
        /// Delivered packets the upper layer answered with "port unreachable".
        up_unreachable,
        /// Upper-layer messages that did not decode.
        up_malformed,
        /// Packets received from the upper layer to send.
        tx_packets,
        /// Frames handed to the driver.
        tx_frames,
        /// Packets to send that are not valid IPv4 (or have inconsistent metadata).
        tx_malformed,
        /// Packets to send from an address that is not ours.
        tx_bad_src,
        /// Packets to send with no route.
        tx_no_route,
        /// Packets too big for the MTU that may not be fragmented (or a GSO type the
        /// device does not segment).
        tx_too_big,
        /// Packets to send while the link was down.
        tx_link_down,
        /// Frames dropped because the queue to the driver was full.
        tx_queue_full,
        /// Frames larger than the driver channel's buffers.
        tx_too_large_for_channel,
        /// Transmitted frames the driver dropped.
        driver_dropped,
        /// Driver messages that did not decode, or came the wrong way.
        driver_malformed,
        /// Packets dropped because the queue to the upper layer was full.
        up_queue_full,
        /// Packets larger than the upper channel's buffers.
        up_too_large_for_channel,
    }
}

impl fmt::Display for Counters {
    /// The counters that are not zero, as `name=value` separated by spaces.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.write_nonzero(f).map(drop)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::string::ToString;

    #[test]
    fn only_counters_that_are_not_zero_are_printed() {
        let mut c = Counters::default();
        assert_eq!(c.to_string(), "");
        c.rx_frames = 3;
        c.ip_bad_checksum = 1;
        assert_eq!(c.to_string(), "rx_frames=3 ip_bad_checksum=1");
    }
}
