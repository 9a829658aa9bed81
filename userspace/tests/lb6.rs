//! Services over IPv6: the real programs on hand-made IPv6 packets (BPF_PROG_TEST_RUN). A
//! dual-stack service's IPv6 VIP and IPv6 publication lead to the backends' IPv6 addresses,
//! chosen by the same Maglev table as IPv4's (the backend predicted here from the table and the
//! tuple hash); every rewritten packet and every refusal is compared byte for byte with one
//! built here, its checksum computed here from scratch. Needs root.
mod lab;

use std::net::IpAddr;

use datapath_common::{iface_flags, Counter, EndpointInfo, IfaceInfo, IpKey, PortKey, PortTarget, GATEWAY_MAC};
use lab::*;

const CLIENT6: &str = "2001:db8:7::9";

/// The test interface is the client container (network 1, dual stack), an endpoint too.
fn client_container(lab: &mut Lab) {
    lab.send_as(CONTAINER_IP, CONTAINER_MAC);
    let endpoint = EndpointInfo { host_ifindex: TEST_IFINDEX, network_id: NETWORK, mac: CONTAINER_MAC, ..Default::default() };
    lab.dp.set_endpoint(CONTAINER_IP6.parse().unwrap(), endpoint).unwrap();
}

#[test]
fn a_container_reaches_a_services_ipv6_vip_and_the_backend_answers_from_it() {
    TestNetns::new("lb6-vip").run(MASQ, |lab| {
        let table = install6(lab, TCP, &[0, 1, 2], 0);
        client_container(lab);
        let to_vip = Ip6::new(CONTAINER_IP6, VIP6, TCP, 64);
        let out = lab.from_container(&packet6(GATEWAY_MAC, CONTAINER_MAC, to_vip, tcp_segment(40000, VIP_PORT, 0x02, b"")));
        assert_eq!(out.verdict, REDIRECT, "delivered into the backend");
        let b = predicted6(&table, CONTAINER_IP6, VIP6, 40000, VIP_PORT, TCP);
        // Same network: the destination only, no hop (the hop limit stays), the client's address kept.
        let expected =
            packet6(backend_mac(b), GATEWAY_MAC, Ip6::new(CONTAINER_IP6, &backend_ip6(b), TCP, 64), tcp_segment(40000, BACKEND_PORT, 0x02, b""));
        assert_eq!(out.packet, expected, "the backend Maglev chose, at its IPv6 address; port and checksum exact");
        // The connection's next packet goes the same way.
        let out = lab.from_container(&packet6(GATEWAY_MAC, CONTAINER_MAC, to_vip, tcp_segment(40000, VIP_PORT, 0x10, b"GET /")));
        assert_eq!(out.verdict, REDIRECT);
        let expected =
            packet6(backend_mac(b), GATEWAY_MAC, Ip6::new(CONTAINER_IP6, &backend_ip6(b), TCP, 64), tcp_segment(40000, BACKEND_PORT, 0x10, b"GET /"));
        assert_eq!(out.packet, expected);

        // New connections spread as the table says, over every backend.
        let mut seen = std::collections::HashSet::new();
        for port in 41000..41060u16 {
            let out = lab.from_container(&packet6(GATEWAY_MAC, CONTAINER_MAC, to_vip, tcp_segment(port, VIP_PORT, 0x02, b"")));
            let chosen = which_backend6(&out.packet);
            assert_eq!(chosen, predicted6(&table, CONTAINER_IP6, VIP6, port, VIP_PORT, TCP), "port {port}");
            seen.insert(chosen);
        }
        assert_eq!(seen.len(), 3, "60 connections reach every backend");

        // The backend's answer leaves with the VIP as its source.
        lab.flags |= iface_flags::SERVICE_BACKEND;
        lab.send_as(backend_ip(b), backend_mac(b));
        let answer = Ip6::new(&backend_ip6(b), CONTAINER_IP6, TCP, 64);
        let out = lab.from_container(&packet6(GATEWAY_MAC, backend_mac(b), answer, tcp_segment(BACKEND_PORT, 40000, 0x12, b"")));
        assert_eq!(out.verdict, REDIRECT);
        let expected = packet6(CONTAINER_MAC, GATEWAY_MAC, Ip6::new(VIP6, CONTAINER_IP6, TCP, 64), tcp_segment(VIP_PORT, 40000, 0x12, b""));
        assert_eq!(out.packet, expected, "from [VIP6]:80, as the client expects");
        // Other traffic of the backend to the client is plain container-to-container traffic.
        let other = packet6(GATEWAY_MAC, backend_mac(b), answer, tcp_segment(5000, 40000, 0x12, b""));
        let out = lab.from_container(&other);
        assert_eq!(out.verdict, REDIRECT);
        assert_eq!(&out.packet[14..], &other[14..], "untranslated");
        assert_eq!(lab.counter(Counter::ServiceBalanced), 61);
        assert_eq!(lab.counter(Counter::ViaVip), 2, "the client's second packet and the backend's answer");

        // A container of another network does not reach this network's VIP.
        let words = |text: &str| IpKey::from(text.parse::<IpAddr>().unwrap()).addr;
        let stranger = IfaceInfo {
            network_id: 2,
            ipv4: OTHER_CONTAINER_IP,
            gateway_ipv4: [10, 0, 9, 1],
            flags: MASQ,
            mac: OTHER_CONTAINER_MAC,
            ipv6: words("fd00:2::3"),
            gateway_ipv6: words("fd00:2::1"),
            ..Default::default()
        };
        lab.dp.set_iface(TEST_IFINDEX, stranger).unwrap();
        let from_other = Ip6::new("fd00:2::3", VIP6, TCP, 64);
        let out = lab.from_container(&packet6(GATEWAY_MAC, OTHER_CONTAINER_MAC, from_other, tcp_segment(40001, VIP_PORT, 0x02, b"")));
        assert_eq!(out.verdict, DROP);
        assert_eq!(lab.counter(Counter::DropIsolation), 1);
    });
}

#[test]
fn the_vip6_is_answered_by_neighbour_discovery_on_its_network_only() {
    TestNetns::new("lb6-ndp").run(MASQ, |lab| {
        install6(lab, TCP, &[0], 0);
        client_container(lab);
        let solicitation = |target: &str| {
            let t = v6(target);
            let mut icmp = vec![135, 0, 0, 0, 0, 0, 0, 0];
            icmp.extend_from_slice(&t);
            let group = format!("ff02::1:ff{:02x}:{:02x}{:02x}", t[13], t[14], t[15]);
            packet6([0x33, 0x33, 0xff, t[13], t[14], t[15]], CONTAINER_MAC, Ip6::new(CONTAINER_IP6, &group, ICMPV6, 255), icmp)
        };
        let out = lab.from_container(&solicitation(VIP6));
        assert_eq!(out.verdict, REDIRECT, "answered back into the container");
        // Solicited + override, from the gateway's MAC (not a router's advertisement).
        let mut advert = vec![136, 0, 0, 0, 0x60, 0, 0, 0];
        advert.extend_from_slice(&v6(VIP6));
        advert.extend_from_slice(&[2, 1]);
        advert.extend_from_slice(&GATEWAY_MAC);
        let expected = packet6(CONTAINER_MAC, GATEWAY_MAC, Ip6::new(VIP6, CONTAINER_IP6, ICMPV6, 255), advert);
        assert_eq!(out.packet, expected, "an exact advertisement");
        // Another network's VIP is nobody here.
        lab.dp.set_vip("fd00:1::65".parse().unwrap(), 2).unwrap();
        assert_eq!(lab.from_container(&solicitation("fd00:1::65")).verdict, DROP);
        assert_eq!(lab.counter(Counter::DropNdpUnknownTarget), 1);
    });
}

#[test]
fn ipv6_clients_from_outside_reach_a_published_service_with_their_own_address() {
    TestNetns::new("lb6-pub").run(MASQ, |lab| {
        let table = install6(lab, TCP, &[0, 1, 2], 0);
        let syn = packet6(UPLINK_MAC, ROUTER_MAC, Ip6::new(CLIENT6, UPLINK_IP6, TCP, 50), tcp_segment(50000, PUBLISHED_PORT, 0x02, b""));
        let out = lab.from_uplink(&syn);
        assert_eq!(out.verdict, REDIRECT, "into the backend");
        let b = predicted6(&table, CLIENT6, UPLINK_IP6, 50000, PUBLISHED_PORT, TCP);
        let expected =
            packet6(backend_mac(b), GATEWAY_MAC, Ip6::new(CLIENT6, &backend_ip6(b), TCP, 49), tcp_segment(50000, BACKEND_PORT, 0x02, b""));
        assert_eq!(out.packet, expected, "the client's own address kept, the backend's port, checksum exact");
        assert_eq!(lab.counter(Counter::ServiceBalanced), 1);

        // The backend's answer leaves from the address and port the client used.
        lab.flags |= iface_flags::SERVICE_BACKEND;
        lab.send_as(backend_ip(b), backend_mac(b));
        let answer = packet6(GATEWAY_MAC, backend_mac(b), Ip6::new(&backend_ip6(b), CLIENT6, TCP, 64), tcp_segment(BACKEND_PORT, 50000, 0x12, b""));
        let out = lab.from_container(&answer);
        assert_eq!(out.verdict, REDIRECT, "out of the uplink");
        let expected = packet6(ROUTER_MAC, UPLINK_MAC, Ip6::new(UPLINK_IP6, CLIENT6, TCP, 63), tcp_segment(PUBLISHED_PORT, 50000, 0x12, b""));
        assert_eq!(out.packet, expected);

        // Many clients spread over the backends, each where the table says.
        let mut seen = std::collections::HashSet::new();
        for host in 1..=40u16 {
            let client = format!("2001:db8:7::{host:x}");
            let syn = packet6(UPLINK_MAC, ROUTER_MAC, Ip6::new(&client, UPLINK_IP6, TCP, 50), tcp_segment(40000, PUBLISHED_PORT, 0x02, b""));
            let chosen = which_backend6(&lab.from_uplink(&syn).packet);
            assert_eq!(chosen, predicted6(&table, &client, UPLINK_IP6, 40000, PUBLISHED_PORT, TCP), "{client}");
            seen.insert(chosen);
        }
        assert_eq!(seen.len(), 3);

        // The VIP is reached from its network and the host only: from the LAN it is the host's.
        let to_vip = packet6(UPLINK_MAC, ROUTER_MAC, Ip6::new(CLIENT6, VIP6, TCP, 50), tcp_segment(50001, VIP_PORT, 0x02, b""));
        let out = lab.from_uplink(&to_vip);
        assert_eq!((out.verdict, out.packet), (PASS, to_vip));
        // An IPv4-only publication of a service takes no IPv6 client.
        let published6 = PortKey::any_ipv6_address(PUBLISHED_PORT.to_be(), TCP);
        lab.dp.remove_port_if(published6, PortTarget { service: SERVICE, ..PortTarget::default() }).unwrap();
        let syn = packet6(UPLINK_MAC, ROUTER_MAC, Ip6::new(CLIENT6, UPLINK_IP6, TCP, 50), tcp_segment(50010, PUBLISHED_PORT, 0x02, b""));
        let out = lab.from_uplink(&syn);
        assert_eq!((out.verdict, out.packet), (PASS, syn));
    });
}

#[test]
fn a_backend_reaching_its_own_service_over_ipv6_goes_through_the_gateway_address() {
    TestNetns::new("lb6-self").run(MASQ, |lab| {
        install6(lab, TCP, &[0], 0);
        lab.flags |= iface_flags::SERVICE_BACKEND;
        lab.send_as(backend_ip(0), backend_mac(0));
        let syn = packet6(GATEWAY_MAC, backend_mac(0), Ip6::new(&backend_ip6(0), VIP6, TCP, 64), tcp_segment(40000, VIP_PORT, 0x02, b""));
        let out = lab.from_container(&syn);
        assert_eq!(out.verdict, REDIRECT);
        // From the network's IPv6 gateway, one hop, at a port of the NAT range: its answer comes
        // back through the datapath.
        let gw_port = port_at(&out.packet, L4_6);
        assert!(NAT_PORTS.contains(&gw_port), "{gw_port}");
        let expected =
            packet6(backend_mac(0), GATEWAY_MAC, Ip6::new(GATEWAY_IP6, &backend_ip6(0), TCP, 63), tcp_segment(gw_port, BACKEND_PORT, 0x02, b""));
        assert_eq!(out.packet, expected);
        let answer = packet6(GATEWAY_MAC, backend_mac(0), Ip6::new(&backend_ip6(0), GATEWAY_IP6, TCP, 64), tcp_segment(BACKEND_PORT, gw_port, 0x12, b""));
        let out = lab.from_container(&answer);
        assert_eq!(out.verdict, REDIRECT);
        let expected = packet6(backend_mac(0), GATEWAY_MAC, Ip6::new(VIP6, &backend_ip6(0), TCP, 63), tcp_segment(VIP_PORT, 40000, 0x12, b""));
        assert_eq!(out.packet, expected, "from [VIP6]:80");
        assert_eq!(lab.counter(Counter::ServiceBalanced), 1);
    });
}

#[test]
fn an_empty_ipv6_service_refuses_with_a_reset_or_port_unreachable() {
    TestNetns::new("lb6-empty").run(MASQ, |lab| {
        install6(lab, TCP, &[], 0);
        // TCP from outside: RST+ACK from the published address, acknowledging the SYN and its data.
        let syn = packet6(UPLINK_MAC, ROUTER_MAC, Ip6::new(CLIENT6, UPLINK_IP6, TCP, 50), tcp_segment(41000, PUBLISHED_PORT, 0x02, b"early data"));
        let out = lab.from_uplink(&syn);
        assert_eq!(out.verdict, REDIRECT, "sent back out");
        let mut rst = Vec::new();
        rst.extend_from_slice(&PUBLISHED_PORT.to_be_bytes());
        rst.extend_from_slice(&41000u16.to_be_bytes());
        rst.extend_from_slice(&0u32.to_be_bytes());
        rst.extend_from_slice(&(0x1001u32 + 10 + 1).to_be_bytes());
        rst.extend_from_slice(&[0x50, 0x14, 0, 0, 0, 0, 0, 0]);
        let expected = packet6(ROUTER_MAC, UPLINK_MAC, Ip6::new(UPLINK_IP6, CLIENT6, TCP, 64), rst);
        assert_eq!(out.packet, expected, "an exact RST+ACK");

        // UDP from a container to the VIP: ICMPv6 port unreachable quoting the datagram.
        client_container(lab);
        let vip6: IpAddr = VIP6.parse().unwrap();
        let key = PortKey { addr: IpKey::from(vip6), port: VIP_PORT.to_be(), proto: UDP, _pad: 0 };
        lab.dp.set_port(key, PortTarget { service: SERVICE, network: NETWORK, ..PortTarget::default() }).unwrap();
        let sent = packet6(GATEWAY_MAC, CONTAINER_MAC, Ip6::new(CONTAINER_IP6, VIP6, UDP, 64), udp_datagram(5353, VIP_PORT, b"query"));
        let out = lab.from_container(&sent);
        assert_eq!(out.verdict, REDIRECT, "sent back into the container");
        let mut icmp = vec![1, 4, 0, 0, 0, 0, 0, 0];
        icmp.extend_from_slice(&sent[14..14 + 48]);
        let expected = packet6(CONTAINER_MAC, GATEWAY_MAC, Ip6::new(VIP6, CONTAINER_IP6, ICMPV6, 64), icmp);
        assert_eq!(out.packet, expected, "an exact port unreachable");
        assert_eq!(lab.counter(Counter::ServiceRejected), 2);
    });
}

#[test]
fn an_internal_network_reaches_its_services_ipv6_vip_and_nothing_else() {
    TestNetns::new("lb6-internal").run(iface_flags::INTERNAL, |lab| {
        let table = install6(lab, TCP, &[0, 1, 2], 0);
        client_container(lab);
        let to_vip = Ip6::new(CONTAINER_IP6, VIP6, TCP, 64);
        let out = lab.from_container(&packet6(GATEWAY_MAC, CONTAINER_MAC, to_vip, tcp_segment(40000, VIP_PORT, 0x02, b"")));
        assert_eq!(out.verdict, REDIRECT, "the VIP is on the network");
        assert_eq!(which_backend6(&out.packet), predicted6(&table, CONTAINER_IP6, VIP6, 40000, VIP_PORT, TCP));
        let out = lab.from_container(&packet6(GATEWAY_MAC, CONTAINER_MAC, to_vip, tcp_segment(40000, VIP_PORT, 0x10, b"x")));
        assert_eq!(out.verdict, REDIRECT, "the connection's next packet too");
        // Anything else off the network is dropped: the outside, a port the VIP does not serve,
        // the service's publication through the gateway.
        for (dst, port) in [(SERVER_IP6, 80), (VIP6, 81), (GATEWAY_IP6, PUBLISHED_PORT)] {
            let out = lab.from_container(&packet6(GATEWAY_MAC, CONTAINER_MAC, Ip6::new(CONTAINER_IP6, dst, TCP, 64), tcp_segment(40001, port, 0x02, b"")));
            assert_eq!(out.verdict, DROP, "{dst} port {port}");
        }
        assert_eq!(lab.counter(Counter::DropInternal), 3);
    });
}
