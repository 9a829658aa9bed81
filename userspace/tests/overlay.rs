//! Overlay (cluster) decisions of the datapath on hand-made packets (BPF_PROG_TEST_RUN): a
//! packet to an endpoint on another node leaves by the VXLAN device, addressed to that endpoint,
//! or, where the datapath does VXLAN itself, wrapped here byte for byte (outer headers and their
//! checksum computed independently); another network's endpoint there stays isolated; a
//! connection from outside balanced to a backend on another node is translated exactly as for a
//! local one and sent through the tunnel (XDP leaves it to TC), its later packets too. VXLAN
//! arriving on the uplink is unwrapped and checked: the genuine packet delivered byte for byte,
//! a spoofed inner source, an unknown VNI, a destination not here, a routing-mesh packet to
//! anything but a backend port, and one from a stranger on the LAN (no live node: it would take
//! the answers) dropped and counted. (The VXLAN device's own program,
//! `from_overlay`, reads the tunnel key, which BPF_PROG_TEST_RUN cannot give a packet: it drops a
//! frame without one; tests/tests/cluster.rs forges VXLAN end to end.) Over IPv6 too: a
//! container's connection to a cluster service's VIP6 balanced to a backend on another node and
//! its answer translated back; the routing mesh's IPv6 connection from outside sent to node 2,
//! and taken there only to a backend port. Needs root.
mod lab;

use std::{
    collections::{HashMap, HashSet},
    net::IpAddr,
};

use datapath_common::{endpoint_flags, program_names, services::flow_hash, Counter, EndpointInfo, IpKey, PortKey, GATEWAY_MAC};
use lab::*;

/// The node's VXLAN device, as remote endpoints' entries name it.
const VXLAN_IFINDEX: u32 = 77;
const NODE2: [u8; 4] = [10, 250, 0, 2];
const NODE3: [u8; 4] = [10, 250, 0, 3];
/// A host on the underlay's LAN that is no node of the cluster.
const STRANGER: [u8; 4] = [10, 250, 0, 200];
const VNI: u32 = 4097;
const REMOTE_IP: [u8; 4] = [10, 0, 0, 9];
const REMOTE_MAC: [u8; 6] = [0x02, 0x42, 10, 0, 0, 9];

/// `ip` (`mac`) is an endpoint of network `network` on node 2.
fn on_node2(lab: &mut Lab, ip: [u8; 4], mac: [u8; 6], network: u32) {
    let info = EndpointInfo { host_ifindex: VXLAN_IFINDEX, network_id: network, mac, underlay: NODE2, vni: VNI, ..Default::default() };
    lab.dp.set_endpoint(IpAddr::from(ip), info).unwrap();
}

#[test]
fn a_packet_to_another_nodes_endpoint_leaves_by_the_tunnel_and_isolation_holds() {
    TestNetns::new("ov-to").run(MASQ, |lab| {
        lab.add_container(CONTAINER_IP, CONTAINER_MAC, TEST_IFINDEX, NETWORK, GATEWAY_IP);
        on_node2(lab, REMOTE_IP, REMOTE_MAC, NETWORK);
        let ip = Ip { src: CONTAINER_IP, dst: REMOTE_IP, proto: TCP, ttl: 64, id: 1, frag: 0x4000 };
        let syn = packet(GATEWAY_MAC, CONTAINER_MAC, ip, tcp_segment(40000, 80, 0x02, b""));
        let out = lab.from_container(&syn);
        assert_eq!(out.verdict, REDIRECT, "to the VXLAN device");
        // Between two endpoints of one network: no hop, nothing translated.
        assert_eq!(out.packet, packet(REMOTE_MAC, GATEWAY_MAC, ip, tcp_segment(40000, 80, 0x02, b"")));
        assert_eq!(lab.counter(Counter::ToOverlay), 1);

        // An endpoint of another network on node 2: isolated as on one host.
        let other = [10, 0, 0, 10];
        on_node2(lab, other, [0x02, 0x42, 10, 0, 0, 10], NETWORK + 1);
        let out = lab.from_container(&packet(GATEWAY_MAC, CONTAINER_MAC, Ip { dst: other, ..ip }, tcp_segment(40000, 80, 0x02, b"")));
        assert_eq!(out.verdict, DROP);
        assert_eq!(lab.counter(Counter::DropIsolation), 1);
        assert_eq!(lab.counter(Counter::ToOverlay), 1);
    });
}

#[test]
fn a_connection_from_outside_is_balanced_to_a_backend_on_another_node_through_the_tunnel() {
    TestNetns::new("ov-mesh").run(MASQ, |lab| {
        let table = install(lab, TCP, &[0, 1, 2], 0);
        // The service's backends live on node 2 (the routing mesh: every node has the table).
        for i in 0..3 {
            on_node2(lab, backend_ip(i), backend_mac(i), NETWORK);
        }
        let client = Ip { src: CLIENT_IP, dst: UPLINK_IP, proto: TCP, ttl: 60, id: 7, frag: 0x4000 };
        let syn = packet(UPLINK_MAC, ROUTER_MAC, client, tcp_segment(33000, PUBLISHED_PORT, 0x02, b""));
        assert_eq!(lab.from_uplink_xdp(&syn).verdict, XDP_PASS, "XDP cannot set a tunnel key: TC's");
        let out = lab.from_uplink(&syn);
        assert_eq!(out.verdict, REDIRECT, "to the VXLAN device");
        let b = predicted(&table, CLIENT_IP, UPLINK_IP, 33000, PUBLISHED_PORT, TCP);
        // As for a local backend: the destination becomes the backend (one hop), the client's
        // address stays.
        let expected = packet(backend_mac(b), GATEWAY_MAC, Ip { dst: backend_ip(b), ttl: 59, ..client }, tcp_segment(33000, BACKEND_PORT, 0x02, b""));
        assert_eq!(out.packet, expected, "the backend Maglev chose, addresses, port and checksums exact");
        assert_eq!((lab.counter(Counter::ServiceBalanced), lab.counter(Counter::ToOverlay)), (1, 1));

        // The connection's later packets follow it through the tunnel (XDP still leaves them).
        assert_eq!(lab.from_uplink_xdp(&syn).verdict, XDP_PASS);
        let out = lab.from_uplink(&syn);
        assert_eq!((out.verdict, out.packet), (REDIRECT, expected), "the retransmitted SYN, tracked");
        assert_eq!((lab.counter(Counter::ServiceBalanced), lab.counter(Counter::ToOverlay)), (1, 2));
    });
}

#[test]
fn a_container_cannot_send_vxlan_to_another_node_from_this_nodes_address() {
    TestNetns::new("ov-forge").run(MASQ, |lab| {
        datapath_vxlan(lab);
        // Masqueraded, a datagram to node 2's VXLAN port would leave from this node's underlay
        // address: node 2 would take its inner packet as this node's (an endpoint here, or a
        // routing-mesh connection whose answers come here).
        let forged = vxlan_frame(UPLINK_IP, VNI, (REMOTE_MAC, GATEWAY_MAC), &inner_tcp(Ip { src: CONTAINER_IP, dst: REMOTE_IP, proto: TCP, ttl: 64, id: 1, frag: 0x4000 }, 40000, 80, 0x02));
        let as_sent = |dst: [u8; 4], dport: u16, frag: u16| {
            let udp = [&40000u16.to_be_bytes()[..], &dport.to_be_bytes(), &forged[14 + 20 + 4..]].concat();
            packet(GATEWAY_MAC, CONTAINER_MAC, Ip { src: CONTAINER_IP, dst, proto: UDP, ttl: 64, id: 9, frag }, udp)
        };
        let out = lab.from_container(&as_sent(NODE2, 4789, 0x4000));
        assert_eq!((out.verdict, lab.counter(Counter::DropForgedTunnel)), (DROP, 1), "to node 2's VXLAN port");
        let out = lab.from_container(&as_sent(NODE3, 4789, 0x2000));
        assert_eq!((out.verdict, lab.counter(Counter::DropForgedTunnel)), (DROP, 2), "a first fragment to node 3's");
        // Another port of a node, and VXLAN to an address that is no node: masqueraded as ever.
        for (dst, dport) in [(NODE2, 4790), (STRANGER, 4789)] {
            let out = lab.from_container(&as_sent(dst, dport, 0x4000));
            assert_eq!(out.verdict, REDIRECT, "{dst:?}:{dport}");
            assert_eq!(&out.packet[14 + 12..14 + 16], &UPLINK_IP, "masqueraded");
        }
        assert_eq!(lab.counter(Counter::DropForgedTunnel), 2);
    });
}

#[test]
fn what_arrives_by_the_tunnel_without_its_key_is_dropped() {
    TestNetns::new("ov-key").run(MASQ, |lab| {
        lab.add_container(CONTAINER_IP, CONTAINER_MAC, TEST_IFINDEX, NETWORK, GATEWAY_IP);
        on_node2(lab, REMOTE_IP, REMOTE_MAC, NETWORK);
        let overlay = lab.dp.program_fd_of(program_names::FROM_OVERLAY).unwrap();
        let ip = Ip { src: REMOTE_IP, dst: CONTAINER_IP, proto: TCP, ttl: 64, id: 1, frag: 0x4000 };
        let frame = packet(CONTAINER_MAC, REMOTE_MAC, ip, tcp_segment(80, 40000, 0x12, b""));
        let out = bpfnet::test_run::run_tc(overlay, &frame).unwrap();
        assert_eq!(out.verdict, DROP);
        assert_eq!(lab.counter(Counter::DropOverlayUnknownVni), 1);
        assert_eq!(lab.counter(Counter::FromOverlay), 0);
    });
}

/// The lab node does VXLAN itself, with the uplink's address as its underlay address; network
/// `NETWORK` is VNI `VNI` here, with the container here and `REMOTE_IP` on node 2.
fn datapath_vxlan(lab: &mut Lab) {
    lab.dp.set_overlay_node(Some(UPLINK_IP.into())).unwrap();
    lab.dp.set_overlay_peers(&HashSet::from([NODE2.into(), NODE3.into()])).unwrap();
    lab.dp.set_overlay_vnis(&[(VNI, NETWORK)]).unwrap();
    lab.add_container(CONTAINER_IP, CONTAINER_MAC, TEST_IFINDEX, NETWORK, GATEWAY_IP);
    on_node2(lab, REMOTE_IP, REMOTE_MAC, NETWORK);
}

/// `inner` (an IPv4 packet) in VXLAN with `vni`, from `from` to the lab node's uplink.
fn vxlan_frame(from: [u8; 4], vni: u32, inner_eth: ([u8; 6], [u8; 6]), inner: &[u8]) -> Vec<u8> {
    vxlan_frame_of(from, vni, inner_eth, 0x0800, inner)
}

/// As [`vxlan_frame`], with an inner packet of Ethernet type `inner_type`.
fn vxlan_frame_of(from: [u8; 4], vni: u32, inner_eth: ([u8; 6], [u8; 6]), inner_type: u16, inner: &[u8]) -> Vec<u8> {
    vxlan_frame_fragment(from, 0x4000, vni, inner_eth, inner_type, inner)
}

/// As [`vxlan_frame_of`], the outer IPv4 header's flags and fragment offset `frag`.
fn vxlan_frame_fragment(from: [u8; 4], frag: u16, vni: u32, inner_eth: ([u8; 6], [u8; 6]), inner_type: u16, inner: &[u8]) -> Vec<u8> {
    let mut payload = vec![0x08, 0, 0, 0];
    payload.extend_from_slice(&(vni << 8).to_be_bytes());
    payload.extend_from_slice(&inner_eth.0);
    payload.extend_from_slice(&inner_eth.1);
    payload.extend_from_slice(&inner_type.to_be_bytes());
    payload.extend_from_slice(inner);
    let mut udp = vec![0xc0, 0x01, 0x12, 0xb5];
    udp.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
    udp.extend_from_slice(&[0, 0]);
    udp.extend_from_slice(&payload);
    let outer = Ip { src: from, dst: UPLINK_IP, proto: UDP, ttl: 63, id: 0, frag };
    frame(UPLINK_MAC, ROUTER_MAC, &outer, &udp)
}

/// An inner TCP packet (IP header and segment, checksums exact).
fn inner_tcp(ip: Ip, sport: u16, dport: u16, flags: u8) -> Vec<u8> {
    packet([0; 6], [0; 6], ip, tcp_segment(sport, dport, flags, b"hi"))[14..].to_vec()
}

/// An inner IPv6 packet (IP header and `segment`, its checksum made exact).
fn inner6(ip: Ip6, segment: Vec<u8>) -> Vec<u8> {
    packet6([0; 6], [0; 6], ip, segment)[14..].to_vec()
}

/// As [`inner_tcp`], with no payload and sequence number `seq`.
fn inner_tcp_at(ip: Ip, sport: u16, dport: u16, flags: u8, seq: u32) -> Vec<u8> {
    packet([0; 6], [0; 6], ip, tcp_segment_at(sport, dport, flags, seq, 0, b""))[14..].to_vec()
}

/// What the lab node sends node 2 for `inner` (a packet of Ethernet type `inner_type`), built
/// here from scratch: the outer headers to node 2 (the underlay route: the uplink's router),
/// UDP from the port `hash` (of the inner addresses) chooses, VXLAN with the network's VNI, the
/// inner frame to the endpoint from the gateway.
fn wrapped_for_node2(hash: u32, inner_type: u16, inner: &[u8]) -> Vec<u8> {
    let sport = (49_152 + hash % 16_384) as u16;
    let mut vxlan = vec![0x08, 0, 0, 0];
    vxlan.extend_from_slice(&(VNI << 8).to_be_bytes());
    vxlan.extend_from_slice(&REMOTE_MAC);
    vxlan.extend_from_slice(&GATEWAY_MAC);
    vxlan.extend_from_slice(&inner_type.to_be_bytes());
    vxlan.extend_from_slice(inner);
    let mut udp = sport.to_be_bytes().to_vec();
    udp.extend_from_slice(&4789u16.to_be_bytes());
    udp.extend_from_slice(&((8 + vxlan.len()) as u16).to_be_bytes());
    udp.extend_from_slice(&[0, 0]);
    udp.extend_from_slice(&vxlan);
    let outer = Ip { src: UPLINK_IP, dst: NODE2, proto: UDP, ttl: 64, id: 0, frag: 0x4000 };
    let mut expected = ROUTER_MAC.to_vec();
    expected.extend_from_slice(&UPLINK_MAC);
    expected.extend_from_slice(&[0x08, 0x00]);
    expected.extend_from_slice(&ip_header(&outer, udp.len()));
    expected.extend_from_slice(&udp);
    expected
}

#[test]
fn the_datapath_wraps_a_packet_to_another_node_in_vxlan_byte_for_byte() {
    TestNetns::new("ov-wrap").run(MASQ, |lab| {
        datapath_vxlan(lab);
        let ip = Ip { src: CONTAINER_IP, dst: REMOTE_IP, proto: TCP, ttl: 64, id: 1, frag: 0x4000 };
        let sent = packet(GATEWAY_MAC, CONTAINER_MAC, ip, tcp_segment(40000, 80, 0x02, b""));
        let out = lab.from_container(&sent);
        assert_eq!(out.verdict, REDIRECT, "out of the uplink");

        let hash = flow_hash(u32::from_ne_bytes(CONTAINER_IP), u32::from_ne_bytes(REMOTE_IP), 0, 0, 0);
        let expected = wrapped_for_node2(hash, 0x0800, &sent[14..]);
        assert_eq!(out.packet, expected, "outer Ethernet, IPv4 (checksum), UDP, VXLAN, inner frame");
        assert_eq!(lab.counter(Counter::ToOverlay), 1);
    });
}

#[test]
fn vxlan_on_the_uplink_is_unwrapped_checked_and_delivered() {
    TestNetns::new("ov-unwrap").run(MASQ, |lab| {
        datapath_vxlan(lab);
        let ip = Ip { src: REMOTE_IP, dst: CONTAINER_IP, proto: TCP, ttl: 64, id: 3, frag: 0x4000 };
        let inner = inner_tcp(ip, 80, 40000, 0x12);

        // Genuine: node 2's endpoint, by node 2, with the network's VNI.
        let out = lab.from_uplink(&vxlan_frame(NODE2, VNI, (GATEWAY_MAC, REMOTE_MAC), &inner));
        assert_eq!(out.verdict, REDIRECT, "into the container");
        let mut expected = CONTAINER_MAC.to_vec();
        expected.extend_from_slice(&GATEWAY_MAC);
        expected.extend_from_slice(&[0x08, 0x00]);
        expected.extend_from_slice(&inner);
        assert_eq!(out.packet, expected, "the inner packet untouched, addressed to the container");
        assert_eq!(lab.counter(Counter::FromOverlay), 1);

        // Node 3 speaking for node 2's endpoint; an unknown VNI; an endpoint not here.
        let out = lab.from_uplink(&vxlan_frame(NODE3, VNI, (GATEWAY_MAC, REMOTE_MAC), &inner));
        assert_eq!((out.verdict, lab.counter(Counter::DropOverlaySpoofed)), (DROP, 1));
        let out = lab.from_uplink(&vxlan_frame(NODE2, 999, (GATEWAY_MAC, REMOTE_MAC), &inner));
        assert_eq!((out.verdict, lab.counter(Counter::DropOverlayUnknownVni)), (DROP, 1));
        let elsewhere = inner_tcp(Ip { dst: [10, 0, 0, 77], ..ip }, 80, 40000, 0x12);
        let out = lab.from_uplink(&vxlan_frame(NODE2, VNI, (GATEWAY_MAC, REMOTE_MAC), &elsewhere));
        assert_eq!((out.verdict, lab.counter(Counter::DropOverlayDestination)), (DROP, 1));
        assert_eq!(lab.counter(Counter::FromOverlay), 1);

        // Routing mesh: a client from outside, balanced here by node 2, only to a backend port.
        let mesh = HashMap::from([(PortKey { addr: IpKey::from_ipv4_octets(CONTAINER_IP), port: 8080u16.to_be(), proto: TCP, _pad: 0 }, 1)]);
        lab.dp.set_mesh_backends(&mesh).unwrap();
        let from_client = Ip { src: CLIENT_IP, dst: CONTAINER_IP, proto: TCP, ttl: 63, id: 4, frag: 0x4000 };
        let syn = inner_tcp(from_client, 33000, 8080, 0x02);
        let out = lab.from_uplink(&vxlan_frame(NODE2, VNI, (CONTAINER_MAC, GATEWAY_MAC), &syn));
        assert_eq!(out.verdict, REDIRECT, "to the backend, untranslated");
        assert_eq!(&out.packet[14..], &syn[..], "the client's address kept");
        assert_eq!(lab.counter(Counter::MeshIn), 1);
        let other_port = inner_tcp(from_client, 33001, 22, 0x02);
        let out = lab.from_uplink(&vxlan_frame(NODE2, VNI, (CONTAINER_MAC, GATEWAY_MAC), &other_port));
        assert_eq!((out.verdict, lab.counter(Counter::DropOverlaySpoofed)), (DROP, 2), "no other port of it");

        // A stranger on the LAN (no node of the cluster) is never handed a connection: not a
        // new one, and not the client's live one (whose answers would then go to it).
        let out = lab.from_uplink(&vxlan_frame(STRANGER, VNI, (CONTAINER_MAC, GATEWAY_MAC), &inner_tcp(from_client, 33002, 8080, 0x02)));
        assert_eq!((out.verdict, lab.counter(Counter::DropOverlayStranger)), (DROP, 1), "a new connection from a stranger");
        let out = lab.from_uplink(&vxlan_frame(STRANGER, VNI, (CONTAINER_MAC, GATEWAY_MAC), &syn));
        assert_eq!((out.verdict, lab.counter(Counter::DropOverlayStranger)), (DROP, 2), "the live connection's tuple from a stranger");
        assert_eq!(lab.counter(Counter::MeshIn), 1);
        // The backend's answer still goes back through node 2, wrapped for it.
        lab.send_as(CONTAINER_IP, CONTAINER_MAC);
        let answer = Ip { src: CONTAINER_IP, dst: CLIENT_IP, proto: TCP, ttl: 64, id: 5, frag: 0x4000 };
        let out = lab.from_container(&packet(GATEWAY_MAC, CONTAINER_MAC, answer, tcp_segment(8080, 33000, 0x12, b"")));
        assert_eq!(out.verdict, REDIRECT, "out of the uplink, wrapped");
        assert_eq!(&out.packet[14 + 16..14 + 20], &NODE2, "to node 2, which balanced it");
        // Node 3, a node, takes over the tuple of an open connection neither: a SYN spoofed with
        // the client's address through it would move the answers away.
        let out = lab.from_uplink(&vxlan_frame(NODE3, VNI, (CONTAINER_MAC, GATEWAY_MAC), &syn));
        assert_eq!((out.verdict, lab.counter(Counter::DropOverlaySpoofed)), (DROP, 3), "an open connection stays with node 2");
        let out = lab.from_container(&packet(GATEWAY_MAC, CONTAINER_MAC, answer, tcp_segment(8080, 33000, 0x12, b"")));
        assert_eq!((out.verdict, &out.packet[14 + 16..14 + 20]), (REDIRECT, &NODE2[..]), "still to node 2");
        // Once it closes (the client's reset, in its window, through node 2), a new connection
        // on its port through node 3 is node 3's, and its answers follow it there.
        let reset = inner_tcp_at(from_client, 33000, 8080, 0x04, 0x1004);
        assert_eq!(lab.from_uplink(&vxlan_frame(NODE2, VNI, (CONTAINER_MAC, GATEWAY_MAC), &reset)).verdict, REDIRECT);
        let out = lab.from_uplink(&vxlan_frame(NODE3, VNI, (CONTAINER_MAC, GATEWAY_MAC), &syn));
        assert_eq!((out.verdict, lab.counter(Counter::MeshIn)), (REDIRECT, 3));
        let out = lab.from_container(&packet(GATEWAY_MAC, CONTAINER_MAC, answer, tcp_segment(8080, 33000, 0x12, b"")));
        assert_eq!((out.verdict, &out.packet[14 + 16..14 + 20]), (REDIRECT, &NODE3[..]), "to node 3 now");
        // A node that left the cluster is a stranger again.
        lab.dp.set_overlay_peers(&HashSet::from([NODE3.into()])).unwrap();
        let out = lab.from_uplink(&vxlan_frame(NODE2, VNI, (CONTAINER_MAC, GATEWAY_MAC), &inner_tcp(from_client, 33003, 8080, 0x02)));
        assert_eq!((out.verdict, lab.counter(Counter::DropOverlayStranger)), (DROP, 3), "node 2 gone from the cluster");

        // A fragment of VXLAN is the kernel's to reassemble (a later one's payload could pose as
        // a UDP header to port 4789): not unwrapped here, whatever it says.
        for frag in [0x2000, 0x0010] {
            let out = lab.from_uplink(&vxlan_frame_fragment(NODE2, frag, VNI, (GATEWAY_MAC, REMOTE_MAC), 0x0800, &inner));
            assert_eq!(out.verdict, PASS, "fragment {frag:#06x}");
        }
        assert_eq!(lab.counter(Counter::FromOverlay), 1);

        // Where the node leaves VXLAN to its device, the datagram is the host's (its socket).
        lab.dp.set_overlay_node(None).unwrap();
        let out = lab.from_uplink(&vxlan_frame(NODE2, VNI, (GATEWAY_MAC, REMOTE_MAC), &inner));
        assert_eq!(out.verdict, PASS);
    });
}

const REMOTE_IP6: &str = "fd00:1::9";

/// The lab node does VXLAN itself (see [`datapath_vxlan`]), dual stack: the container behind
/// the test interface has `CONTAINER_IP6` (an endpoint here), `REMOTE_IP6` is on node 2.
fn datapath_vxlan6(lab: &mut Lab) {
    datapath_vxlan(lab);
    lab.send_as(CONTAINER_IP, CONTAINER_MAC);
    let here = EndpointInfo { host_ifindex: TEST_IFINDEX, network_id: NETWORK, mac: CONTAINER_MAC, ..Default::default() };
    lab.dp.set_endpoint(CONTAINER_IP6.parse().unwrap(), here).unwrap();
    let there = EndpointInfo { host_ifindex: VXLAN_IFINDEX, network_id: NETWORK, mac: REMOTE_MAC, underlay: NODE2, vni: VNI, ..Default::default() };
    lab.dp.set_endpoint(REMOTE_IP6.parse().unwrap(), there).unwrap();
}

#[test]
fn ipv6_to_another_nodes_endpoint_is_wrapped_in_vxlan_byte_for_byte() {
    TestNetns::new("ov6-wrap").run(MASQ, |lab| {
        datapath_vxlan6(lab);
        let sent = packet6(GATEWAY_MAC, CONTAINER_MAC, Ip6::new(CONTAINER_IP6, REMOTE_IP6, TCP, 64), tcp_segment(40000, 80, 0x02, b"v6"));
        let out = lab.from_container(&sent);
        assert_eq!(out.verdict, REDIRECT, "out of the uplink");
        // Outer IPv4 (the underlay is IPv4): its Ethernet type IPv4's, the inner frame's IPv6's;
        // the UDP source port from the last words of the inner addresses.
        let word = |off: usize| u32::from_ne_bytes([sent[off], sent[off + 1], sent[off + 2], sent[off + 3]]);
        let expected = wrapped_for_node2(flow_hash(word(14 + 20), word(14 + 36), 0, 0, 0), 0x86dd, &sent[14..]);
        assert_eq!(out.packet, expected, "outer Ethernet (IPv4's type), IPv4, UDP, VXLAN, the inner IPv6 frame");

        // Where the node leaves VXLAN to its device: to the device, addressed to the endpoint.
        lab.dp.set_overlay_node(None).unwrap();
        let out = lab.from_container(&sent);
        assert_eq!(out.verdict, REDIRECT);
        assert_eq!(out.packet, packet6(REMOTE_MAC, GATEWAY_MAC, Ip6::new(CONTAINER_IP6, REMOTE_IP6, TCP, 64), tcp_segment(40000, 80, 0x02, b"v6")));
        assert_eq!(lab.counter(Counter::ToOverlay), 2);
    });
}

#[test]
fn ipv6_vxlan_on_the_uplink_is_unwrapped_checked_and_delivered() {
    TestNetns::new("ov6-unwrap").run(MASQ, |lab| {
        datapath_vxlan6(lab);
        let inner = inner6(Ip6::new(REMOTE_IP6, CONTAINER_IP6, TCP, 64), tcp_segment(80, 40000, 0x12, b"v6"));
        let out = lab.from_uplink(&vxlan_frame_of(NODE2, VNI, (GATEWAY_MAC, REMOTE_MAC), 0x86dd, &inner));
        assert_eq!(out.verdict, REDIRECT, "into the container");
        let mut expected = CONTAINER_MAC.to_vec();
        expected.extend_from_slice(&GATEWAY_MAC);
        expected.extend_from_slice(&[0x86, 0xdd]);
        expected.extend_from_slice(&inner);
        assert_eq!(out.packet, expected, "an IPv6 frame again, the inner packet untouched");
        assert_eq!(lab.counter(Counter::FromOverlay), 1);

        // Node 3 speaking for node 2's endpoint; node 2 speaking for this node's own container;
        // a destination that is not here.
        let out = lab.from_uplink(&vxlan_frame_of(NODE3, VNI, (GATEWAY_MAC, REMOTE_MAC), 0x86dd, &inner));
        assert_eq!((out.verdict, lab.counter(Counter::DropOverlaySpoofed)), (DROP, 1));
        let forged = inner6(Ip6::new(CONTAINER_IP6, CONTAINER_IP6, TCP, 64), tcp_segment(80, 40000, 0x12, b"v6"));
        let out = lab.from_uplink(&vxlan_frame_of(NODE2, VNI, (GATEWAY_MAC, REMOTE_MAC), 0x86dd, &forged));
        assert_eq!((out.verdict, lab.counter(Counter::DropOverlaySpoofed)), (DROP, 2));
        let elsewhere = inner6(Ip6::new(REMOTE_IP6, "fd00:1::77", TCP, 64), tcp_segment(80, 40000, 0x12, b"v6"));
        let out = lab.from_uplink(&vxlan_frame_of(NODE2, VNI, (GATEWAY_MAC, REMOTE_MAC), 0x86dd, &elsewhere));
        assert_eq!((out.verdict, lab.counter(Counter::DropOverlayDestination)), (DROP, 1));
        assert_eq!(lab.counter(Counter::FromOverlay), 1);
    });
}

/// The service's backends 0..3 (both addresses) live on node 2, backends of a cluster service.
fn backends_on_node2(lab: &mut Lab) {
    for i in 0..3 {
        let there = EndpointInfo {
            host_ifindex: VXLAN_IFINDEX,
            network_id: NETWORK,
            mac: backend_mac(i),
            flags: endpoint_flags::SERVICE_BACKEND,
            underlay: NODE2,
            vni: VNI,
            ..Default::default()
        };
        lab.dp.set_endpoint(IpAddr::from(backend_ip(i)), there).unwrap();
        lab.dp.set_endpoint(backend_ip6(i).parse().unwrap(), there).unwrap();
    }
}

#[test]
fn a_container_reaches_a_cluster_services_vip6_whose_backend_is_on_another_node() {
    TestNetns::new("ov6-vip").run(MASQ, |lab| {
        let table = install6(lab, TCP, &[0, 1, 2], 0);
        datapath_vxlan6(lab);
        // The service's backends live on node 2, as the daemon writes them there: remote, and
        // backends of a cluster service (their answers are translated here).
        backends_on_node2(lab);
        let to_vip = Ip6::new(CONTAINER_IP6, VIP6, TCP, 64);
        let out = lab.from_container(&packet6(GATEWAY_MAC, CONTAINER_MAC, to_vip, tcp_segment(40000, VIP_PORT, 0x02, b"")));
        assert_eq!(out.verdict, REDIRECT, "out of the uplink, wrapped for node 2");
        let b = predicted6(&table, CONTAINER_IP6, VIP6, 40000, VIP_PORT, TCP);
        // Outer Ethernet, IPv4, UDP and VXLAN (50 bytes, as for any packet to node 2), then the
        // translated frame: to the backend Maglev chose, only the destination rewritten.
        let to_backend = |flags: u8, data: &[u8]| {
            packet6(backend_mac(b), GATEWAY_MAC, Ip6::new(CONTAINER_IP6, &backend_ip6(b), TCP, 64), tcp_segment(40000, BACKEND_PORT, flags, data))
        };
        assert_eq!(&out.packet[..12], &[ROUTER_MAC, UPLINK_MAC].concat()[..], "to the underlay's router");
        assert_eq!(&out.packet[14 + 16..14 + 20], &NODE2, "to node 2");
        assert_eq!(&out.packet[50..], &to_backend(0x02, b"")[..], "the inner frame, port and checksum exact");
        // The connection's next packet goes the same way (tracked).
        let out = lab.from_container(&packet6(GATEWAY_MAC, CONTAINER_MAC, to_vip, tcp_segment(40000, VIP_PORT, 0x10, b"GET /")));
        assert_eq!((out.verdict, &out.packet[50..]), (REDIRECT, &to_backend(0x10, b"GET /")[..]));
        assert_eq!((lab.counter(Counter::ServiceBalanced), lab.counter(Counter::ToOverlay)), (1, 2));

        // The backend's answer comes back from node 2 and reaches the client from the VIP6.
        let answer = inner6(Ip6::new(&backend_ip6(b), CONTAINER_IP6, TCP, 64), tcp_segment(BACKEND_PORT, 40000, 0x12, b""));
        let out = lab.from_uplink(&vxlan_frame_of(NODE2, VNI, (GATEWAY_MAC, backend_mac(b)), 0x86dd, &answer));
        assert_eq!(out.verdict, REDIRECT, "into the client");
        let expected = packet6(CONTAINER_MAC, GATEWAY_MAC, Ip6::new(VIP6, CONTAINER_IP6, TCP, 64), tcp_segment(VIP_PORT, 40000, 0x12, b""));
        assert_eq!(out.packet, expected, "from [VIP6]:80, as the client expects");
        assert_eq!(lab.counter(Counter::ViaVip), 2, "the client's second packet and the answer");
        // Other traffic of that backend to the client is plain traffic between endpoints.
        let other = inner6(Ip6::new(&backend_ip6(b), CONTAINER_IP6, TCP, 64), tcp_segment(5000, 40000, 0x12, b""));
        let out = lab.from_uplink(&vxlan_frame_of(NODE2, VNI, (GATEWAY_MAC, backend_mac(b)), 0x86dd, &other));
        assert_eq!((out.verdict, &out.packet[14..]), (REDIRECT, &other[..]), "untranslated");
    });
}

#[test]
fn the_routing_mesh_carries_ipv6_to_a_backend_on_another_node_and_takes_it_only_to_a_backend_port() {
    TestNetns::new("ov6-mesh").run(MASQ, |lab| {
        let table = install6(lab, TCP, &[0, 1, 2], 0);
        datapath_vxlan6(lab);
        backends_on_node2(lab);
        // This node takes the client's connection on its published port and balances it to a
        // backend on node 2: translated as for a local one (one hop), wrapped for node 2.
        let client6 = "2001:db8:7::9";
        let syn = packet6(UPLINK_MAC, ROUTER_MAC, Ip6::new(client6, UPLINK_IP6, TCP, 50), tcp_segment(50000, PUBLISHED_PORT, 0x02, b""));
        let out = lab.from_uplink(&syn);
        assert_eq!(out.verdict, REDIRECT, "out of the uplink, to node 2");
        let b = predicted6(&table, client6, UPLINK_IP6, 50000, PUBLISHED_PORT, TCP);
        let inner = packet6(backend_mac(b), GATEWAY_MAC, Ip6::new(client6, &backend_ip6(b), TCP, 49), tcp_segment(50000, BACKEND_PORT, 0x02, b""));
        assert_eq!(&out.packet[14 + 16..14 + 20], &NODE2, "to node 2");
        assert_eq!(&out.packet[50..], &inner[..], "the client's address kept, the backend's, the port, checksum exact");
        assert_eq!((lab.counter(Counter::ServiceBalanced), lab.counter(Counter::ToOverlay)), (1, 1));

        // Node 2's side, played by this node: a client's connection balanced here by node 2 to
        // a backend port of this node's container is taken untranslated; another port is not.
        let mesh = HashMap::from([(PortKey { addr: IpKey::from(CONTAINER_IP6.parse::<IpAddr>().unwrap()), port: 8080u16.to_be(), proto: TCP, _pad: 0 }, 1)]);
        lab.dp.set_mesh_backends(&mesh).unwrap();
        let to_backend = inner6(Ip6::new(client6, CONTAINER_IP6, TCP, 49), tcp_segment(50001, 8080, 0x02, b""));
        let out = lab.from_uplink(&vxlan_frame_of(NODE2, VNI, (CONTAINER_MAC, GATEWAY_MAC), 0x86dd, &to_backend));
        assert_eq!(out.verdict, REDIRECT, "to the backend");
        assert_eq!(&out.packet[14..], &to_backend[..], "untranslated: the client's address kept");
        assert_eq!(lab.counter(Counter::MeshIn), 1);
        let other_port = inner6(Ip6::new(client6, CONTAINER_IP6, TCP, 49), tcp_segment(50002, 22, 0x02, b""));
        let spoofed = lab.counter(Counter::DropOverlaySpoofed);
        let out = lab.from_uplink(&vxlan_frame_of(NODE2, VNI, (CONTAINER_MAC, GATEWAY_MAC), 0x86dd, &other_port));
        assert_eq!((out.verdict, lab.counter(Counter::DropOverlaySpoofed)), (DROP, spoofed + 1), "no other port of it");
        // Nor a packet of no connection that does not start one.
        let stray = inner6(Ip6::new(client6, CONTAINER_IP6, TCP, 49), tcp_segment(50003, 8080, 0x10, b"x"));
        let out = lab.from_uplink(&vxlan_frame_of(NODE2, VNI, (CONTAINER_MAC, GATEWAY_MAC), 0x86dd, &stray));
        assert_eq!((out.verdict, lab.counter(Counter::DropOverlaySpoofed)), (DROP, spoofed + 2));
        // Nor from a stranger on the LAN, the live connection's tuple or a new one.
        let out = lab.from_uplink(&vxlan_frame_of(STRANGER, VNI, (CONTAINER_MAC, GATEWAY_MAC), 0x86dd, &to_backend));
        assert_eq!((out.verdict, lab.counter(Counter::DropOverlayStranger)), (DROP, 1));
        let fresh = inner6(Ip6::new(client6, CONTAINER_IP6, TCP, 49), tcp_segment(50004, 8080, 0x02, b""));
        let out = lab.from_uplink(&vxlan_frame_of(STRANGER, VNI, (CONTAINER_MAC, GATEWAY_MAC), 0x86dd, &fresh));
        assert_eq!((out.verdict, lab.counter(Counter::DropOverlayStranger)), (DROP, 2));
        assert_eq!(lab.counter(Counter::MeshIn), 1);
    });
}
