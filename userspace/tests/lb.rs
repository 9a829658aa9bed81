//! Service load-balancing datapath tests: the real programs on hand-made packets
//! (BPF_PROG_TEST_RUN). The backend of each new connection is predicted here from the Maglev
//! table and the tuple hash, every rewritten packet is compared byte for byte with one built
//! from scratch, and refusals (TCP reset, ICMP port unreachable) are checked to the last byte.
//! Needs root.
mod lab;

use std::collections::HashMap;

use datapath_common::{
    iface_flags, BackendInfo, Counter, IfaceInfo, IpKey, PortKey, PortTarget, ServiceInfo, GATEWAY_MAC,
};
use lab::*;

#[test]
fn a_container_reaches_a_service_vip_and_the_backend_answers_from_the_vip() {
    TestNetns::new("lb-vip").run(MASQ, |lab| {
        let table = install(lab, TCP, &[0, 1, 2], 0);
        lab.add_container(CONTAINER_IP, CONTAINER_MAC, TEST_IFINDEX, NETWORK, GATEWAY_IP);
        let to_vip = Ip { src: CONTAINER_IP, dst: VIP, proto: TCP, ttl: 64, id: 5, frag: 0x4000 };
        let syn = packet(GATEWAY_MAC, CONTAINER_MAC, to_vip, tcp_segment(40000, VIP_PORT, 0x02, b""));
        let out = lab.from_container(&syn);
        assert_eq!(out.verdict, REDIRECT, "delivered into the backend");
        let b = predicted(&table, CONTAINER_IP, VIP, 40000, VIP_PORT, TCP);
        // Same network: the destination only, no hop (the TTL stays), the client's address kept.
        let expected = packet(
            backend_mac(b),
            GATEWAY_MAC,
            Ip { dst: backend_ip(b), ..to_vip },
            tcp_segment(40000, BACKEND_PORT, 0x02, b""),
        );
        assert_eq!(out.packet, expected, "the backend Maglev chose, addresses, port and checksums exact");

        // A LAN host that forges the connection's tuple (the container as source, to the VIP)
        // reaches nobody: the connection is between two containers.
        let forged = packet(UPLINK_MAC, ROUTER_MAC, to_vip, tcp_segment(40000, VIP_PORT, 0x18, b"injected"));
        let out = lab.from_uplink(&forged);
        assert_eq!(out.verdict, DROP, "not delivered into the backend");
        assert_eq!(lab.counter(Counter::DropUplinkSpoofed), 1);
        assert_eq!(lab.from_uplink_xdp(&forged).verdict, XDP_PASS, "XDP leaves it to TC");

        // The backend's answer leaves with the VIP as its source.
        lab.flags |= iface_flags::SERVICE_BACKEND;
        lab.send_as(backend_ip(b), backend_mac(b));
        let answer = Ip { src: backend_ip(b), dst: CONTAINER_IP, proto: TCP, ttl: 64, id: 9, frag: 0x4000 };
        let syn_ack = packet(GATEWAY_MAC, backend_mac(b), answer, tcp_segment(BACKEND_PORT, 40000, 0x12, b""));
        let out = lab.from_container(&syn_ack);
        assert_eq!(out.verdict, REDIRECT);
        let expected = packet(CONTAINER_MAC, GATEWAY_MAC, Ip { src: VIP, ..answer }, tcp_segment(VIP_PORT, 40000, 0x12, b""));
        assert_eq!(out.packet, expected, "from VIP:80, as the client expects");

        // Other traffic of the backend to the client is plain container-to-container traffic.
        let other = packet(GATEWAY_MAC, backend_mac(b), answer, tcp_segment(5000, 40000, 0x12, b""));
        let out = lab.from_container(&other);
        assert_eq!(out.verdict, REDIRECT);
        assert_eq!(&out.packet[14..], &other[14..], "untranslated");
        assert_eq!(lab.counter(Counter::ServiceBalanced), 1);
        assert_eq!(lab.counter(Counter::ViaVip), 1);
        assert_eq!(lab.counter(Counter::Redirected), 1);

        // A container of another network does not reach this network's VIP.
        let stranger =
            IfaceInfo { network_id: 2, ipv4: OTHER_CONTAINER_IP, gateway_ipv4: [10, 0, 0, 1], flags: MASQ, mac: OTHER_CONTAINER_MAC, _pad: [0; 2], ..Default::default() };
        lab.dp.set_iface(TEST_IFINDEX, stranger).unwrap();
        let from_other = Ip { src: OTHER_CONTAINER_IP, ..to_vip };
        let out = lab.from_container(&packet(GATEWAY_MAC, OTHER_CONTAINER_MAC, from_other, tcp_segment(40001, VIP_PORT, 0x02, b"")));
        assert_eq!(out.verdict, DROP);
        assert_eq!(lab.counter(Counter::DropIsolation), 1);
    });
}

#[test]
fn a_backend_reaching_its_own_service_goes_through_the_gateway_address() {
    TestNetns::new("lb-self").run(MASQ, |lab| {
        let table = install(lab, TCP, &[0], 0);
        assert!(table.iter().all(|&id| id == 1));
        lab.flags |= iface_flags::SERVICE_BACKEND;
        lab.send_as(backend_ip(0), backend_mac(0));
        let to_vip = Ip { src: backend_ip(0), dst: VIP, proto: TCP, ttl: 64, id: 5, frag: 0x4000 };
        let out = lab.from_container(&packet(GATEWAY_MAC, backend_mac(0), to_vip, tcp_segment(40000, VIP_PORT, 0x02, b"")));
        assert_eq!(out.verdict, REDIRECT);
        // From the gateway, so that the answer comes back through the datapath (not looped
        // inside the backend's own stack), at a port of the NAT range (the gateway's address is
        // the host's).
        let gw_port = port_at(&out.packet, L4);
        assert!(NAT_PORTS.contains(&gw_port), "{gw_port}");
        let expected = packet(
            backend_mac(0),
            GATEWAY_MAC,
            Ip { src: GATEWAY_IP, dst: backend_ip(0), ttl: 63, ..to_vip },
            tcp_segment(gw_port, BACKEND_PORT, 0x02, b""),
        );
        assert_eq!(out.packet, expected);
        let answer = Ip { src: backend_ip(0), dst: GATEWAY_IP, proto: TCP, ttl: 64, id: 6, frag: 0x4000 };
        let out = lab.from_container(&packet(GATEWAY_MAC, backend_mac(0), answer, tcp_segment(BACKEND_PORT, gw_port, 0x12, b"")));
        assert_eq!(out.verdict, REDIRECT);
        let expected = packet(
            backend_mac(0),
            GATEWAY_MAC,
            Ip { src: VIP, dst: backend_ip(0), ttl: 63, ..answer },
            tcp_segment(VIP_PORT, 40000, 0x12, b""),
        );
        assert_eq!(out.packet, expected, "the answer arrives from VIP:80");
    });
}

#[test]
fn outside_connections_spread_evenly_and_stay_on_their_backend_when_backends_change() {
    TestNetns::new("lb-spread").run(MASQ, |lab| {
        let table = install(lab, TCP, &[0, 1, 2], 0);
        let client = |sport: u16, flags: u8| {
            let ip = Ip { src: CLIENT_IP, dst: UPLINK_IP, proto: TCP, ttl: 60, id: 1, frag: 0x4000 };
            packet(UPLINK_MAC, ROUTER_MAC, ip, tcp_segment(sport, PUBLISHED_PORT, flags, b""))
        };
        let mut first: HashMap<u16, usize> = HashMap::new();
        let mut counts = [0usize; 3];
        for sport in 20_000..23_000u16 {
            let out = lab.from_uplink(&client(sport, 0x02));
            assert_eq!(out.verdict, REDIRECT);
            let b = which_backend(&out.packet);
            assert_eq!(b, predicted(&table, CLIENT_IP, UPLINK_IP, sport, PUBLISHED_PORT, TCP), "port {sport}");
            assert_eq!(lab::port_at(&out.packet, L4 + 2), BACKEND_PORT);
            assert_eq!(&out.packet[14 + 12..14 + 16], &CLIENT_IP, "the backend sees the client's address");
            counts[b] += 1;
            first.insert(sport, b);
        }
        // 3000 connections over 3 backends: each within 4.5 standard deviations (26) of 1000.
        for c in counts {
            assert!((880..=1120).contains(&c), "uneven spread: {counts:?}");
        }
        assert_eq!(lab.counter(Counter::ServiceBalanced), 3000);

        // Backend 1 goes (as `rm-backend` writes it): its slots go to the others, the rest stay.
        let smaller = table_of(&[0, 2]);
        lab.dp.write_maglev(0, &smaller).unwrap();
        lab.dp.set_backend(2, BackendInfo::default()).unwrap();
        lab.dp.set_service(SERVICE, ServiceInfo { table_base: 0, table_size: M, backends: 2, _pad: 0, affinity_ns: 0 }).unwrap();
        // Existing connections keep their backend, the removed one's too (conntrack).
        for sport in (20_000..23_000u16).step_by(50) {
            let out = lab.from_uplink(&client(sport, 0x10));
            assert_eq!(out.verdict, REDIRECT);
            assert_eq!(which_backend(&out.packet), first[&sport], "established connection {sport} moved");
        }
        // New connections: none to the removed backend; of the others' slots, few move.
        let mut moved = 0;
        let mut kept = 0;
        for sport in 30_000..33_000u16 {
            let out = lab.from_uplink(&client(sport, 0x02));
            let b = which_backend(&out.packet);
            assert_ne!(b, 1, "a new connection reached the removed backend");
            let before = predicted(&table, CLIENT_IP, UPLINK_IP, sport, PUBLISHED_PORT, TCP);
            if before != 1 {
                if before == b { kept += 1 } else { moved += 1 }
            }
        }
        assert!(moved * 100 < (moved + kept) * 5, "Maglev moved {moved} of {} flows of the remaining backends", moved + kept);
    });
}

#[test]
fn client_ip_affinity_keeps_a_client_on_one_backend() {
    TestNetns::new("lb-aff").run(MASQ, |lab| {
        install(lab, TCP, &[0, 1, 2], 60_000_000_000);
        let mut seen = std::collections::HashSet::new();
        for sport in 40_000..40_050u16 {
            let ip = Ip { src: CLIENT_IP, dst: UPLINK_IP, proto: TCP, ttl: 60, id: 1, frag: 0 };
            let out = lab.from_uplink(&packet(UPLINK_MAC, ROUTER_MAC, ip, tcp_segment(sport, PUBLISHED_PORT, 0x02, b"")));
            seen.insert(which_backend(&out.packet));
        }
        assert_eq!(seen.len(), 1, "one client, one backend: {seen:?}");
        // Other clients spread over the backends.
        let mut others = std::collections::HashSet::new();
        for host in 1..=60u8 {
            let ip = Ip { src: [203, 0, 113, host], dst: UPLINK_IP, proto: TCP, ttl: 60, id: 1, frag: 0 };
            let out = lab.from_uplink(&packet(UPLINK_MAC, ROUTER_MAC, ip, tcp_segment(40_000, PUBLISHED_PORT, 0x02, b"")));
            others.insert(which_backend(&out.packet));
        }
        assert_eq!(others.len(), 3, "60 clients reach every backend");
    });
}

#[test]
fn a_service_without_backends_refuses_with_a_reset_or_port_unreachable() {
    TestNetns::new("lb-empty").run(MASQ, |lab| {
        install(lab, TCP, &[], 0);
        // TCP from outside: RST+ACK from the published address, acknowledging the SYN.
        let ip = Ip { src: CLIENT_IP, dst: UPLINK_IP, proto: TCP, ttl: 60, id: 1, frag: 0x4000 };
        let syn = packet(UPLINK_MAC, ROUTER_MAC, ip, tcp_segment(41000, PUBLISHED_PORT, 0x02, b"early data"));
        let out = lab.from_uplink(&syn);
        assert_eq!(out.verdict, REDIRECT, "sent back out");
        let mut rst = Vec::new();
        rst.extend_from_slice(&PUBLISHED_PORT.to_be_bytes());
        rst.extend_from_slice(&41000u16.to_be_bytes());
        rst.extend_from_slice(&0u32.to_be_bytes());
        // The SYN's sequence number (0x1001) + its data (10 bytes) + 1 for the SYN.
        rst.extend_from_slice(&(0x1001u32 + 10 + 1).to_be_bytes());
        rst.extend_from_slice(&[0x50, 0x14, 0, 0, 0, 0, 0, 0]);
        let reply_ip = Ip { src: UPLINK_IP, dst: CLIENT_IP, proto: TCP, ttl: 64, id: 0, frag: 0x4000 };
        assert_eq!(out.packet, packet(ROUTER_MAC, UPLINK_MAC, reply_ip, rst), "an exact RST+ACK");

        // UDP from a container to the VIP: port unreachable quoting the datagram.
        let vip_key = PortKey { addr: IpKey::from_ipv4_octets(VIP), port: VIP_PORT.to_be(), proto: UDP, _pad: 0 };
        lab.dp.set_port(vip_key, PortTarget { service: SERVICE, network: NETWORK, ..PortTarget::default() }).unwrap();
        let to_vip = Ip { src: CONTAINER_IP, dst: VIP, proto: UDP, ttl: 64, id: 77, frag: 0x4000 };
        let datagram = l4(&to_vip, udp_datagram(5353, VIP_PORT, b"query"), None);
        let sent = frame(GATEWAY_MAC, CONTAINER_MAC, &to_vip, &datagram);
        let out = lab.from_container(&sent);
        assert_eq!(out.verdict, REDIRECT, "sent back into the container");
        let mut icmp = vec![3, 3, 0, 0, 0, 0, 0, 0];
        icmp.extend_from_slice(&icmp_quote(&to_vip, &datagram));
        let error_ip = Ip { src: VIP, dst: CONTAINER_IP, proto: ICMP, ttl: 64, id: 0, frag: 0x4000 };
        assert_eq!(out.packet, packet(CONTAINER_MAC, GATEWAY_MAC, error_ip, icmp), "an exact port unreachable");
        assert_eq!(lab.counter(Counter::ServiceRejected), 2);
    });
}

#[test]
fn an_internal_network_reaches_its_services_vip_and_nothing_else() {
    TestNetns::new("lb-internal").run(iface_flags::INTERNAL, |lab| {
        let table = install(lab, TCP, &[0, 1, 2], 0);
        lab.add_container(CONTAINER_IP, CONTAINER_MAC, TEST_IFINDEX, NETWORK, GATEWAY_IP);
        let to_vip = Ip { src: CONTAINER_IP, dst: VIP, proto: TCP, ttl: 64, id: 5, frag: 0x4000 };
        let out = lab.from_container(&packet(GATEWAY_MAC, CONTAINER_MAC, to_vip, tcp_segment(40000, VIP_PORT, 0x02, b"")));
        assert_eq!(out.verdict, REDIRECT, "the VIP is on the network");
        assert_eq!(which_backend(&out.packet), predicted(&table, CONTAINER_IP, VIP, 40000, VIP_PORT, TCP));
        // The next packet of that connection too; anything else off the network is dropped.
        let out = lab.from_container(&packet(GATEWAY_MAC, CONTAINER_MAC, to_vip, tcp_segment(40000, VIP_PORT, 0x10, b"x")));
        assert_eq!(out.verdict, REDIRECT);
        let away = Ip { dst: SERVER_IP, ..to_vip };
        let out = lab.from_container(&packet(GATEWAY_MAC, CONTAINER_MAC, away, tcp_segment(40001, 80, 0x02, b"")));
        assert_eq!(out.verdict, DROP);
        let other_port = lab.from_container(&packet(GATEWAY_MAC, CONTAINER_MAC, to_vip, tcp_segment(40002, 81, 0x02, b"")));
        assert_eq!(other_port.verdict, DROP, "a port the VIP does not serve");
        assert_eq!(lab.counter(Counter::DropInternal), 2);
        // A backend the table still names but whose endpoint is gone (a moment of a change):
        // not left to the host, which would forward the packet out of the internal network.
        for i in 0..3 {
            lab.dp.remove_endpoint(std::net::IpAddr::from(backend_ip(i))).unwrap();
        }
        let out = lab.from_container(&packet(GATEWAY_MAC, CONTAINER_MAC, to_vip, tcp_segment(40003, VIP_PORT, 0x02, b"")));
        assert_eq!((out.verdict, lab.counter(Counter::DropInternal)), (DROP, 3), "no backend endpoint, no way out");
    });
}
