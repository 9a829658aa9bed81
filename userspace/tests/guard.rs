//! The datapath's guard (BPF_PROG_TEST_RUN): what arrives from where it must not is dropped and
//! counted by reason — martian addresses, spoofed sources and direct routing to containers on
//! the uplink, loopback publications from containers, whatever the host would forward from an
//! internal network, forged answers to connections made through a VIP — and masquerade takes
//! none of the answers a socket of the host owns. Each test also sends what must still pass.
//! Needs root.
mod lab;

use datapath_common::{iface_flags, Counter, GATEWAY_MAC};
use lab::*;

const LOOPBACK: [u8; 4] = [127, 0, 0, 1];
/// Another network than the test interface's (2): the publishing container's.
const PUBLISHER_NETWORK: u32 = 2;

fn udp_from_outside(src: [u8; 4], dst: [u8; 4], dport: u16) -> Vec<u8> {
    packet(UPLINK_MAC, ROUTER_MAC, Ip { src, dst, proto: UDP, ttl: 60, id: 9, frag: 0 }, udp_datagram(5555, dport, b"attack"))
}

fn syn_from_outside(src: [u8; 4], dst: [u8; 4], dport: u16) -> Vec<u8> {
    packet(UPLINK_MAC, ROUTER_MAC, Ip { src, dst, proto: TCP, ttl: 60, id: 9, frag: 0 }, tcp_segment(5555, dport, 0x02, b""))
}

/// A fragment after the first (offset 800 bytes) with no first fragment seen: no ports.
fn later_fragment(dst_mac: [u8; 6], src_mac: [u8; 6], src: [u8; 4], dst: [u8; 4]) -> Vec<u8> {
    frame(dst_mac, src_mac, &Ip { src, dst, proto: UDP, ttl: 60, id: 0x4242, frag: 100 }, &[0x5a; 64])
}

#[test]
fn the_uplink_drops_martian_spoofed_and_unsolicited_packets() {
    TestNetns::new("guard-up").run(MASQ, |lab| {
        lab.add_container(PUBLISHER_IP, PUBLISHER_MAC, PUBLISHER_IFINDEX, PUBLISHER_NETWORK, PUBLISHER_GATEWAY);
        lab.publish(Some(LOOPBACK), 5353, UDP, PUBLISHER_IP, 53);
        lab.publish(None, 8080, TCP, PUBLISHER_IP, 80);

        // A publication on 127.0.0.1 is the host's processes' only: from outside it is never
        // translated (XDP leaves it to TC, which drops it).
        let to_loopback = udp_from_outside(CLIENT_IP, LOOPBACK, 5353);
        assert_eq!(lab.from_uplink_xdp(&to_loopback).verdict, XDP_PASS);
        assert_eq!(lab.from_uplink(&to_loopback).verdict, DROP);
        // Martian sources, to the host.
        for src in [LOOPBACK, [0, 1, 2, 3], [224, 0, 0, 251], [255, 255, 255, 255]] {
            assert_eq!(lab.from_uplink(&udp_from_outside(src, UPLINK_IP, 9999)).verdict, DROP, "from {src:?}");
        }
        assert_eq!(lab.counter(Counter::DropMartian), 5);

        // A container's or the host's own address as the source, even to a published port.
        let spoofed = syn_from_outside(PUBLISHER_IP, UPLINK_IP, 8080);
        assert_eq!(lab.from_uplink_xdp(&spoofed).verdict, XDP_PASS, "XDP leaves it to TC");
        assert_eq!(lab.from_uplink(&spoofed).verdict, DROP);
        assert_eq!(lab.from_uplink(&udp_from_outside(UPLINK_IP, UPLINK_IP, 53)).verdict, DROP);
        assert_eq!(lab.counter(Counter::DropUplinkSpoofed), 2);

        // Straight to a container (a LAN peer routing a container subnet through the host): a
        // connection, a datagram, a fragment without its first.
        assert_eq!(lab.from_uplink(&syn_from_outside(CLIENT_IP, PUBLISHER_IP, 80)).verdict, DROP);
        assert_eq!(lab.from_uplink(&udp_from_outside(CLIENT_IP, PUBLISHER_IP, 53)).verdict, DROP);
        assert_eq!(lab.from_uplink(&later_fragment(UPLINK_MAC, ROUTER_MAC, CLIENT_IP, PUBLISHER_IP)).verdict, DROP);
        assert_eq!(lab.counter(Counter::DropUplinkToContainer), 3);

        // What must still pass: the host's own traffic, and the published port.
        let to_host = udp_from_outside(CLIENT_IP, UPLINK_IP, 9999);
        let out = lab.from_uplink(&to_host);
        assert_eq!((out.verdict, out.packet), (PASS, to_host));
        assert_eq!(lab.counter(Counter::UplinkToHost), 1);
        let out = lab.from_uplink(&syn_from_outside(CLIENT_IP, UPLINK_IP, 8080));
        assert_eq!(out.verdict, REDIRECT, "the published port is reached from outside");
        assert_eq!(&out.packet[14 + 16..14 + 20], &PUBLISHER_IP);
    });
}

#[test]
fn containers_reach_no_loopback_publication_and_no_martian_address() {
    TestNetns::new("guard-ct").run(MASQ, |lab| {
        lab.add_container(PUBLISHER_IP, PUBLISHER_MAC, PUBLISHER_IFINDEX, PUBLISHER_NETWORK, PUBLISHER_GATEWAY);
        lab.publish(Some(LOOPBACK), 5353, UDP, PUBLISHER_IP, 53);
        for dst in [LOOPBACK, [127, 1, 2, 3], [0, 0, 0, 0]] {
            let p = packet(GATEWAY_MAC, CONTAINER_MAC, Ip { dst, ..from_container(CONTAINER_IP, UDP, 64) }, udp_datagram(5000, 5353, b"x"));
            assert_eq!(lab.from_container(&p).verdict, DROP, "to {dst:?}");
        }
        assert_eq!(lab.counter(Counter::DropMartian), 3);
        assert_eq!(lab.counter(Counter::Hairpin), 0);
    });
}

#[test]
fn an_internal_network_sends_nothing_the_host_would_forward() {
    TestNetns::new("guard-int").run(iface_flags::INTERNAL, |lab| {
        lab.add_container(PUBLISHER_IP, PUBLISHER_MAC, PUBLISHER_IFINDEX, PUBLISHER_NETWORK, PUBLISHER_GATEWAY);
        lab.publish(None, 8080, TCP, PUBLISHER_IP, 80);
        let out_ip = |proto| from_container(CONTAINER_IP, proto, 64);
        let mut timestamp = vec![13, 0, 0, 0, 0, 1, 0, 1];
        timestamp.extend_from_slice(&[0; 12]);
        let sent = l4(&out_ip(UDP), udp_datagram(5000, 53, b"exfiltrated"), None);
        let mut unreachable = vec![3, 3, 0, 0, 0, 0, 0, 0];
        unreachable.extend_from_slice(&icmp_quote(&Ip { src: SERVER_IP, dst: CONTAINER_IP, ..out_ip(UDP) }, &sent));
        unreachable.extend_from_slice(b"payload the error carries out");
        let attempts = [
            ("an ICMP timestamp request", packet(GATEWAY_MAC, CONTAINER_MAC, out_ip(ICMP), timestamp)),
            ("an ICMP error with payload", packet(GATEWAY_MAC, CONTAINER_MAC, out_ip(ICMP), unreachable)),
            ("a fragment without its first", later_fragment(GATEWAY_MAC, CONTAINER_MAC, CONTAINER_IP, SERVER_IP)),
            (
                "another network's published port through the gateway",
                packet(GATEWAY_MAC, CONTAINER_MAC, Ip { dst: GATEWAY_IP, ..out_ip(TCP) }, tcp_segment(40000, 8080, 0x02, b"")),
            ),
        ];
        for (what, p) in &attempts {
            assert_eq!(lab.from_container(p).verdict, DROP, "{what}");
        }
        assert_eq!(lab.counter(Counter::DropInternal), attempts.len() as u64);
        assert_eq!(lab.counter(Counter::ToHost), 0);

        // The gateway's own services (its resolver) stay reachable.
        let query = packet(GATEWAY_MAC, CONTAINER_MAC, Ip { dst: GATEWAY_IP, ..out_ip(UDP) }, udp_datagram(5000, 53, b"q"));
        let out = lab.from_container(&query);
        assert_eq!((out.verdict, out.packet), (PASS, query));
    });
}

#[test]
fn a_forged_answer_from_outside_never_matches_a_connection_through_a_vip() {
    TestNetns::new("guard-vip").run(MASQ, |lab| {
        let table = install(lab, TCP, &[0, 1, 2], 0);
        let to_vip = Ip { src: CONTAINER_IP, dst: VIP, proto: TCP, ttl: 64, id: 5, frag: 0x4000 };
        let out = lab.from_container(&packet(GATEWAY_MAC, CONTAINER_MAC, to_vip, tcp_segment(40000, VIP_PORT, 0x02, b"")));
        assert_eq!(out.verdict, REDIRECT);
        let b = predicted(&table, CONTAINER_IP, VIP, 40000, VIP_PORT, TCP);
        // The backend's answer, forged on the uplink (same tuple as the real one).
        let forged = packet(
            UPLINK_MAC,
            ROUTER_MAC,
            Ip { src: backend_ip(b), dst: CONTAINER_IP, proto: TCP, ttl: 60, id: 6, frag: 0 },
            tcp_segment(BACKEND_PORT, 40000, 0x18, b"injected"),
        );
        assert_eq!(lab.from_uplink_xdp(&forged).verdict, XDP_PASS);
        assert_eq!(lab.from_uplink(&forged).verdict, DROP);
        assert_eq!(lab.counter(Counter::ViaVip), 0);
        assert_eq!(lab.counter(Counter::DropUplinkSpoofed), 1);
    });
}

#[test]
fn an_answer_a_host_socket_owns_stays_the_hosts() {
    TestNetns::new("guard-ports").run(MASQ, |lab| {
        let query = |lab: &mut Lab, dport: u16| {
            let p = packet(GATEWAY_MAC, CONTAINER_MAC, from_container(CONTAINER_IP, UDP, 64), udp_datagram(40000, dport, b"q"));
            let out = lab.from_container(&p);
            assert_eq!(out.verdict, REDIRECT);
            port_at(&out.packet, L4)
        };
        assert_eq!(query(lab, 53), 40000, "the container's port is kept where it is free");
        let answer = packet(UPLINK_MAC, ROUTER_MAC, Ip { src: SERVER_IP, dst: UPLINK_IP, proto: UDP, ttl: 60, id: 3, frag: 0 }, udp_datagram(53, 40000, b"a"));
        assert_eq!(lab.from_uplink(&answer).verdict, REDIRECT, "the container's answer");

        // A host process binds the port afterwards (in the namespace the lookups see): the
        // answers are the host's from now on, and the port is not given to a new translation.
        let _host = std::net::UdpSocket::bind("0.0.0.0:40000").unwrap();
        let out = lab.from_uplink(&answer);
        assert_eq!((out.verdict, out.packet), (PASS, answer), "the host socket keeps its answer");
        assert_eq!(lab.counter(Counter::UplinkToHost), 1);
        let port = query(lab, 54);
        assert!(port != 40000 && NAT_PORTS.contains(&port), "another port from the range: {port}");
    });
}
