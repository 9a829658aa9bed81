//! Overlay (cluster) decisions of the datapath on hand-made packets (BPF_PROG_TEST_RUN): a
//! packet to an endpoint on another node leaves by the VXLAN device, addressed to that endpoint;
//! another network's endpoint there stays isolated; a connection from outside balanced to a
//! backend on another node is translated exactly as for a local one and sent through the tunnel
//! (XDP, which cannot set a tunnel key, leaves it to TC), its later packets too. What arrives by
//! the tunnel needs the tunnel's key, which BPF_PROG_TEST_RUN cannot give a packet: `from_overlay`
//! drops a frame without one, and its checks (VNI, inner source on the sending node, routing
//! mesh) are tested end to end with forged VXLAN datagrams (tests/tests/cluster.rs). Needs root.
mod lab;

use std::net::IpAddr;

use datapath_common::{program_names, Counter, EndpointInfo, GATEWAY_MAC};
use lab::*;

/// The node's VXLAN device, as remote endpoints' entries name it.
const VXLAN_IFINDEX: u32 = 77;
const NODE2: [u8; 4] = [10, 250, 0, 2];
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
