//! The datapath's guard (BPF_PROG_TEST_RUN): what arrives from where it must not is dropped and
//! counted by reason — martian addresses, spoofed sources and direct routing to containers on
//! the uplink, loopback publications from containers, whatever the host would forward from an
//! internal network, forged answers to connections made through a VIP — and masquerade takes
//! none of the answers a socket of the host owns. And the connection tables: only a handshake
//! the client completes makes a connection established, floods of new connections evict only
//! new ones, one container's connections stop at its share, and a reset outside the stream's
//! window does not end tracking. Each test also sends what must still pass. Needs root.
mod lab;

use bpfnet::datapath::LoadOptions;
use datapath_common::{ct_state, iface_flags, CtConfig, CtKey, Counter, IpKey, GATEWAY_MAC};
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

fn tcp_key(src: [u8; 4], dst: [u8; 4], sport: u16, dport: u16) -> CtKey {
    CtKey { saddr: IpKey::from_ipv4_octets(src), daddr: IpKey::from_ipv4_octets(dst), sport: sport.to_be(), dport: dport.to_be(), proto: TCP, _pad: [0; 3] }
}

/// A client's segment from outside to the published port 8080 (from port 40000).
fn from_client(flags: u8, seq: u32, ack: u32) -> Vec<u8> {
    let ip = Ip { src: CLIENT_IP, dst: UPLINK_IP, proto: TCP, ttl: 60, id: 1, frag: 0x4000 };
    packet(UPLINK_MAC, ROUTER_MAC, ip, tcp_segment_at(40000, 8080, flags, seq, ack, b""))
}

/// The publisher's segment back to the client (the test interface sends as the publisher).
fn from_publisher(flags: u8, seq: u32, ack: u32) -> Vec<u8> {
    let ip = Ip { src: PUBLISHER_IP, dst: CLIENT_IP, proto: TCP, ttl: 64, id: 2, frag: 0x4000 };
    packet(GATEWAY_MAC, PUBLISHER_MAC, ip, tcp_segment_at(80, 40000, flags, seq, ack, b""))
}

/// Whether `key` is tracked, and in the established table.
fn where_tracked(lab: &mut Lab, key: &CtKey) -> Option<bool> {
    lab.dp.conntrack_lookup(key).unwrap().map(|(_, established)| established)
}

#[test]
fn only_a_handshake_the_client_completes_makes_a_connection_established_and_resets_must_be_in_window() {
    TestNetns::new("guard-assured").run(MASQ, |lab| {
        lab.add_container(PUBLISHER_IP, PUBLISHER_MAC, PUBLISHER_IFINDEX, 1, GATEWAY_IP);
        lab.publish(None, 8080, TCP, PUBLISHER_IP, 80);
        let original = tcp_key(CLIENT_IP, UPLINK_IP, 40000, 8080);
        let reply = tcp_key(PUBLISHER_IP, CLIENT_IP, 80, 40000);
        assert_eq!(lab.from_uplink(&from_client(0x02, 1000, 0)).verdict, REDIRECT);
        assert_eq!(where_tracked(lab, &original), Some(false), "a SYN makes a new connection");
        lab.send_as(PUBLISHER_IP, PUBLISHER_MAC);
        assert_eq!(lab.from_container(&from_publisher(0x12, 5000, 1001)).verdict, REDIRECT);
        assert_eq!(where_tracked(lab, &reply), Some(false), "the SYN-ACK does not establish it");
        // A spoofer who never saw the SYN-ACK guesses its sequence number: the ACK reaches the
        // container, which judges it, but the connection stays new (a flood can evict it).
        assert_eq!(lab.from_uplink(&from_client(0x10, 1001, 777_777)).verdict, REDIRECT);
        assert_eq!(where_tracked(lab, &original), Some(false), "a blind ACK does not establish it");
        assert_eq!(lab.dp.conntrack_share(PUBLISHER_IFINDEX).unwrap(), 0);
        // The ACK of the SYN-ACK does: both entries move, counted against the publisher.
        assert_eq!(lab.from_uplink(&from_client(0x10, 1001, 5001)).verdict, REDIRECT);
        assert_eq!((where_tracked(lab, &original), where_tracked(lab, &reply)), (Some(true), Some(true)));
        assert_eq!(lab.dp.conntrack_share(PUBLISHER_IFINDEX).unwrap(), 2);

        // A reset far from the client's stream (a blind guess) passes on, tracking unchanged.
        let closing = |lab: &mut Lab| lab.dp.conntrack_entry(&original).unwrap().unwrap().state & ct_state::CLOSING != 0;
        assert_eq!(lab.from_uplink(&from_client(0x04, 1001 + 5_000_000, 0)).verdict, REDIRECT);
        assert!(!closing(lab), "an out-of-window reset ended the connection's tracking");
        assert_eq!(lab.counter(Counter::CtOutOfWindow), 1);
        // So does a FIN; a reset where the stream is ends it.
        assert_eq!(lab.from_container(&from_publisher(0x11, 5001 + 3_000_000_000, 1001)).verdict, REDIRECT);
        assert_eq!(lab.counter(Counter::CtOutOfWindow), 2);
        assert_eq!(lab.from_uplink(&from_client(0x04, 1001, 0)).verdict, REDIRECT);
        assert!(closing(lab), "an in-window reset is the connection's end");
    });
}

#[test]
fn a_reset_answering_a_syn_must_acknowledge_it() {
    TestNetns::new("guard-refused").run(MASQ, |lab| {
        lab.add_container(PUBLISHER_IP, PUBLISHER_MAC, PUBLISHER_IFINDEX, 1, GATEWAY_IP);
        lab.publish(None, 8080, TCP, PUBLISHER_IP, 80);
        let original = tcp_key(CLIENT_IP, UPLINK_IP, 40000, 8080);
        assert_eq!(lab.from_uplink(&from_client(0x02, 1000, 0)).verdict, REDIRECT);
        lab.send_as(PUBLISHER_IP, PUBLISHER_MAC);
        let closing = |lab: &mut Lab| lab.dp.conntrack_entry(&original).unwrap().unwrap().state & ct_state::CLOSING != 0;
        // "Connection refused" is RST|ACK acknowledging the SYN; one that does not, is not.
        assert_eq!(lab.from_container(&from_publisher(0x14, 0, 1001 + 50_000_000)).verdict, REDIRECT);
        assert!(!closing(lab));
        assert_eq!(lab.from_container(&from_publisher(0x14, 0, 1001)).verdict, REDIRECT);
        assert!(closing(lab), "the refusal ends the connection's tracking");
    });
}

#[test]
fn a_flood_of_new_connections_evicts_only_new_ones() {
    // 256 established entries, 64 for new connections.
    let options = LoadOptions { ct_entries: 256, ..Default::default() };
    TestNetns::new("guard-flood").run_with(options, MASQ, |lab| {
        lab.add_container(PUBLISHER_IP, PUBLISHER_MAC, PUBLISHER_IFINDEX, 1, GATEWAY_IP);
        lab.publish(None, 8080, TCP, PUBLISHER_IP, 80);
        assert_eq!(lab.from_uplink(&from_client(0x02, 1000, 0)).verdict, REDIRECT);
        lab.send_as(PUBLISHER_IP, PUBLISHER_MAC);
        assert_eq!(lab.from_container(&from_publisher(0x12, 5000, 1001)).verdict, REDIRECT);
        assert_eq!(lab.from_uplink(&from_client(0x10, 1001, 5001)).verdict, REDIRECT);
        let original = tcp_key(CLIENT_IP, UPLINK_IP, 40000, 8080);
        assert_eq!(where_tracked(lab, &original), Some(true));
        // 20 times the new-connection table in spoofed SYNs, from as many sources.
        for i in 0..640u32 {
            let src = [203, 0, (i >> 8) as u8 + 1, i as u8];
            let ip = Ip { src, dst: UPLINK_IP, proto: TCP, ttl: 60, id: 1, frag: 0 };
            let syn = packet(UPLINK_MAC, ROUTER_MAC, ip, tcp_segment_at(1024 + i as u16, 8080, 0x02, i, 0, b""));
            assert_eq!(lab.from_uplink(&syn).verdict, REDIRECT);
        }
        // The first SYN and ACK, and the flood.
        assert_eq!(lab.counter(Counter::NatIn), 642, "every SYN reached the server");
        assert_eq!(lab.counter(Counter::DropCtInsertFailed), 0);
        // The established connection is still there and still translated, both ways.
        assert_eq!(where_tracked(lab, &original), Some(true));
        let out = lab.from_uplink(&from_client(0x18, 1001, 5001));
        assert_eq!((out.verdict, &out.packet[30..34]), (REDIRECT, &PUBLISHER_IP[..]));
        let out = lab.from_container(&from_publisher(0x18, 5001, 1001));
        assert_eq!((out.verdict, &out.packet[26..30]), (REDIRECT, &UPLINK_IP[..]), "the answer leaves from the published address");
    });
}

#[test]
fn one_containers_answered_flows_stop_at_its_share_and_go_on_working_as_new_ones() {
    // A share of 8 entries: 4 connections.
    let ct_config = CtConfig { endpoint_max: 8, ..CtConfig::DEFAULT };
    let options = LoadOptions { ct_entries: 1024, ct_config, ..Default::default() };
    TestNetns::new("guard-share").run_with(options, MASQ, |lab| {
        for sport in 1000..1010u16 {
            let query = packet(GATEWAY_MAC, CONTAINER_MAC, from_container(CONTAINER_IP, UDP, 64), udp_datagram(sport, 53, b"q"));
            let out = lab.from_container(&query);
            assert_eq!(out.verdict, REDIRECT);
            let nat_port = port_at(&out.packet, L4);
            let ip = Ip { src: SERVER_IP, dst: UPLINK_IP, proto: UDP, ttl: 50, id: 3, frag: 0 };
            let answer = lab.from_uplink(&packet(UPLINK_MAC, ROUTER_MAC, ip, udp_datagram(53, nat_port, b"a")));
            assert_eq!((answer.verdict, port_at(&answer.packet, L4 + 2)), (REDIRECT, sport), "every flow is answered");
        }
        assert_eq!(lab.dp.conntrack_share(TEST_IFINDEX).unwrap(), 8);
        assert_eq!(lab.counter(Counter::CtEndpointShareFull), 6, "six flows over the share");
        let established = (1000..1010u16)
            .filter(|sport| {
                let key = CtKey { proto: UDP, ..tcp_key(CONTAINER_IP, SERVER_IP, *sport, 53) };
                where_tracked(lab, &key) == Some(true)
            })
            .count();
        assert_eq!(established, 4);
    });
}
