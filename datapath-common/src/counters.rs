//! `COUNTERS`: what the datapath did with each packet, one per-CPU slot per [`Counter`].
//!
//! The table is written once, in the `counters!` invocation below: the enum, its index order,
//! its names for display and which counters are drops all come from that one list.

macro_rules! counters {
    ($($(#[doc = $doc:literal])* $variant:ident = $index:literal, $name:literal, $kind:ident;)+) => {
        #[repr(u32)]
        #[derive(Clone, Copy, Debug, PartialEq, Eq)]
        pub enum Counter {
            $($(#[doc = $doc])* $variant = $index,)+
        }

        impl Counter {
            pub const COUNT: u32 = [$($index),+].len() as u32;
            /// Every counter, in index order.
            pub const ALL: [Counter; Self::COUNT as usize] = [$(Counter::$variant),+];

            /// The name `bpfnet stats` and the trace show.
            pub const fn name(self) -> &'static str {
                match self {
                    $(Counter::$variant => $name,)+
                }
            }

            /// Whether the packet was dropped.
            pub const fn is_drop(self) -> bool {
                match self {
                    $(Counter::$variant => counters!(@is_drop $kind),)+
                }
            }
        }
    };
    (@is_drop pass) => { false };
    (@is_drop drop) => { true };
}

counters! {
    /// Delivered to another container with `bpf_redirect_peer`.
    Redirected = 0, "redirected", pass;
    /// Passed to the host stack (gateway, host addresses).
    ToHost = 1, "to_host", pass;
    /// ARP request answered by the datapath.
    ArpReplied = 2, "arp_replied", pass;
    /// Packet too short or malformed headers.
    DropMalformed = 3, "drop_malformed", drop;
    /// Arrived on an interface the datapath does not know (being set up or torn down).
    DropUnknownIface = 4, "drop_unknown_iface", drop;
    /// Source IP is not the sending endpoint's address.
    DropSpoofedSource = 5, "drop_spoofed_source", drop;
    /// Destination is an endpoint of another network.
    DropIsolation = 6, "drop_isolation", drop;
    /// Network has `icc=false` and the destination is a container of the same network.
    DropIcc = 7, "drop_icc", drop;
    /// Network is internal and the destination is outside it.
    DropInternal = 8, "drop_internal", drop;
    /// ARP request for an address that has no owner in the sender's network.
    DropArpUnknownTarget = 9, "drop_arp_unknown_target", drop;
    /// An ethertype the datapath does not forward (neither IPv4, IPv6 nor ARP), or IPv6 from an
    /// endpoint without an IPv6 address, or to where IPv6 is not forwarded yet.
    DropUnsupportedProtocol = 10, "drop_unsupported_protocol", drop;
    /// The redirect helper refused the packet (it only does for invalid flags). A packet for a
    /// target whose veth just vanished is dropped later by the kernel and not counted here.
    DropRedirectFailed = 11, "drop_redirect_failed", drop;
    /// A container's packet masqueraded and sent out of an uplink.
    NatOut = 12, "nat_out", pass;
    /// A reply from outside translated back and delivered into its container.
    NatIn = 13, "nat_in", pass;
    /// An ICMP error about a masqueraded connection translated and delivered to its container.
    NatIcmpError = 14, "nat_icmp_error", pass;
    /// A packet on an uplink that belongs to no tracked connection: the host's own traffic.
    UplinkToHost = 15, "uplink_to_host", pass;
    /// Every masquerade source port for that destination was taken (after several tries).
    DropNatNoPort = 16, "drop_nat_no_port", drop;
    /// The connection table refused a new entry.
    DropCtInsertFailed = 17, "drop_ct_insert_failed", drop;
    /// A container's packet to a published port (through a host address) delivered into the
    /// publishing container, or the answer delivered back.
    Hairpin = 18, "hairpin", pass;
    /// A reply for a container whose TTL ran out on the way in (dropped rather than answered by
    /// the host, which would reset the container's connection).
    DropTtlExpired = 19, "drop_ttl_expired", drop;
    /// A masqueraded connection whose reply tuple another connection took after the table
    /// evicted it under pressure: its packets are dropped rather than answered to another container.
    DropCtReplyLost = 20, "drop_ct_reply_lost", drop;
    /// A new connection to a service sent to the backend Maglev (or affinity) chose.
    ServiceBalanced = 21, "service_balanced", pass;
    /// A new connection to a service without backends refused: a TCP reset or an ICMP port
    /// unreachable sent back (as kube-proxy's REJECT), never a silent drop.
    ServiceRejected = 22, "service_rejected", pass;
    /// A packet of a container's connection to a service VIP, or its answer, delivered.
    ViaVip = 23, "via_vip", pass;
    /// As `nat_in`, done in XDP at the uplink (no skb allocated on the way in): a reply, or a
    /// packet of a connection to a published port, delivered straight into its container.
    XdpNatIn = 24, "xdp_nat_in", pass;
    /// As `service_balanced`, done in XDP at the uplink: a new connection from outside to a
    /// published service sent to its backend.
    XdpServiceBalanced = 25, "xdp_service_balanced", pass;
    /// An address no network sends from or to: a loopback (127.0.0.0/8) or `0.0.0.0/8`
    /// destination, or such a source, or a multicast or broadcast source, from an uplink or a
    /// container (a publication on 127.0.0.1 is for the host's own processes).
    DropMartian = 26, "drop_martian", drop;
    /// Arrived on an uplink with a source that is a container's or the host's own address.
    DropUplinkSpoofed = 27, "drop_uplink_spoofed", drop;
    /// From an uplink to a container's address, outside any tracked connection or publication
    /// (a LAN peer routing to a container subnet through the host).
    DropUplinkToContainer = 28, "drop_uplink_to_container", drop;
    /// A packet of an assured connection that stays in the new-connection table (where a flood
    /// can evict it) because its endpoint holds its share of the established table
    /// (`--ct-max-per-endpoint`). Counted on each of its packets until there is room.
    CtEndpointShareFull = 29, "ct_endpoint_share_full", pass;
    /// As `ct_endpoint_share_full`, because the established table is full (`--ct-max`).
    CtEstablishedFull = 30, "ct_established_full", pass;
    /// A TCP RST or FIN outside its connection's sequence window: passed on to the endpoint,
    /// which judges it, without ending the connection's tracking (a blind attacker's reset).
    CtOutOfWindow = 31, "ct_out_of_window", pass;
    /// Sent to an endpoint on another node, through the VXLAN device.
    ToOverlay = 32, "to_overlay", pass;
    /// Arrived from another node through the VXLAN device and delivered to an endpoint here.
    FromOverlay = 33, "from_overlay", pass;
    /// Arrived through the VXLAN device with a VNI that is none of this node's overlay networks.
    DropOverlayUnknownVni = 34, "drop_overlay_unknown_vni", drop;
    /// Arrived through the VXLAN device with an inner source that is not an endpoint of the
    /// VNI's network that etcd places on the node that sent it (the outer source).
    DropOverlaySpoofed = 35, "drop_overlay_spoofed", drop;
    /// Arrived through the VXLAN device for an address that is not an endpoint of this node on
    /// the VNI's network (or is not IPv4).
    DropOverlayDestination = 36, "drop_overlay_destination", drop;
    /// A packet of a connection from outside that another node took on a published port of a
    /// cluster service and balanced to a backend here (routing mesh), delivered to it.
    MeshIn = 37, "mesh_in", pass;
    /// The answer of a connection this node balanced to a backend on another node, come back
    /// through the tunnel and sent out with the published address restored.
    MeshOut = 38, "mesh_out", pass;
    /// An IPv6 neighbour solicitation answered by the datapath (as `arp_replied` for IPv4).
    NdpReplied = 39, "ndp_replied", pass;
    /// A neighbour solicitation for an address that has no owner in the sender's network.
    DropNdpUnknownTarget = 40, "drop_ndp_unknown_target", drop;
    /// An IPv6 multicast packet other than a neighbour solicitation (router solicitations, MLD
    /// reports), or duplicate address detection (a solicitation from `::`): no router
    /// advertises, nothing floods, nothing answers; addresses and routes are static.
    DropIpv6Multicast = 41, "drop_ipv6_multicast", drop;
    /// A container's neighbour discovery message other than a solicitation (an advertisement, a
    /// redirect, a router's message): the datapath answers for the link; a container may not
    /// tell another where an address is.
    DropNdpForbidden = 42, "drop_ndp_forbidden", drop;
    /// Arrived by the tunnel from an address that is no live node of the cluster (the outer
    /// source), for a backend here as the routing mesh's packets are: only another node may
    /// hand this node a client's connection (and so choose where its answers go).
    DropOverlayStranger = 43, "drop_overlay_stranger", drop;
    /// A container's UDP datagram to another node's VXLAN port: masquerade would send it from
    /// this node's underlay address, which that node trusts as this node's tunnel.
    DropForgedTunnel = 44, "drop_forged_tunnel", drop;
    /// A new connection to a published port or a service whose answers' tuple is a connection
    /// the backend made itself (from that port to that peer): refused, as Linux's conntrack
    /// refuses the clash, rather than take that connection's packets.
    DropCtTupleTaken = 45, "drop_ct_tuple_taken", drop;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counter_table_is_complete() {
        for (i, c) in Counter::ALL.iter().enumerate() {
            assert_eq!(*c as usize, i, "Counter::ALL is in index order");
        }
        assert_eq!(Counter::COUNT, 46);
        assert!(Counter::DropIsolation.is_drop() && !Counter::Redirected.is_drop());
        assert_eq!(Counter::DropArpUnknownTarget.name(), "drop_arp_unknown_target");
        let drops = Counter::ALL.iter().filter(|c| c.is_drop()).count();
        assert_eq!(drops, 25);
    }
}
