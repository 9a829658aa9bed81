//! The uplink's XDP program on hand-made frames (BPF_PROG_TEST_RUN): every frame it translates
//! is compared byte for byte with one built from scratch (checksums computed here, not
//! updated), and every frame it cannot handle must come out untouched with XDP_PASS, for the TC
//! program to handle. Needs root.
mod lab;

use datapath_common::{iface_flags, Counter, ServiceInfo, GATEWAY_MAC};
use lab::*;

/// Every container the lab adds has GRO on its side: XDP may deliver into it.
const XDP: u32 = MASQ | iface_flags::XDP_DELIVERY;

fn client_ip() -> Ip {
    Ip { src: CLIENT_IP, dst: UPLINK_IP, proto: TCP, ttl: 60, id: 1, frag: 0x4000 }
}

/// A client's TCP segment to the published service.
fn from_client(sport: u16, flags: u8, payload: &[u8]) -> Vec<u8> {
    packet(UPLINK_MAC, ROUTER_MAC, client_ip(), tcp_segment(sport, PUBLISHED_PORT, flags, payload))
}

/// That segment as backend `b` must receive it: to its address and port, one hop later.
fn at_backend(b: usize, sport: u16, flags: u8, payload: &[u8]) -> Vec<u8> {
    packet(backend_mac(b), GATEWAY_MAC, Ip { dst: backend_ip(b), ttl: 59, ..client_ip() }, tcp_segment(sport, BACKEND_PORT, flags, payload))
}

#[test]
fn connections_to_a_published_service_are_balanced_and_delivered_in_xdp_as_tc_would() {
    TestNetns::new("xdp-svc").run(XDP, |lab| {
        let table = install(lab, TCP, &[0, 1, 2], 0);
        let mut counts = [0usize; 3];
        for sport in 20_000..20_300u16 {
            let out = lab.from_uplink_xdp(&from_client(sport, 0x02, b""));
            assert_eq!(out.verdict, XDP_REDIRECT, "port {sport}");
            let b = predicted(&table, CLIENT_IP, UPLINK_IP, sport, PUBLISHED_PORT, TCP);
            assert_eq!(out.packet, at_backend(b, sport, 0x02, b""), "Maglev's backend; address, port, TTL, MACs, checksums exact");
            counts[b] += 1;
        }
        assert!(counts.iter().all(|&c| c > 60), "spread over all three: {counts:?}");
        assert_eq!(lab.counter(Counter::XdpServiceBalanced), 300);

        // The connection's later packets, payload and all, follow its conntrack entry.
        let b = predicted(&table, CLIENT_IP, UPLINK_IP, 20_000, PUBLISHED_PORT, TCP);
        let out = lab.from_uplink_xdp(&from_client(20_000, 0x18, b"GET / HTTP/1.1\r\n\r\n"));
        assert_eq!((out.verdict, out.packet), (XDP_REDIRECT, at_backend(b, 20_000, 0x18, b"GET / HTTP/1.1\r\n\r\n")));
        assert_eq!(lab.counter(Counter::XdpNatIn), 1);

        // The answer leaves at TC, from the address and port the client used.
        lab.flags |= iface_flags::SERVICE_BACKEND;
        lab.send_as(backend_ip(b), backend_mac(b));
        let answer = Ip { src: backend_ip(b), dst: CLIENT_IP, proto: TCP, ttl: 64, id: 3, frag: 0x4000 };
        let out = lab.from_container(&packet(GATEWAY_MAC, backend_mac(b), answer, tcp_segment(BACKEND_PORT, 20_000, 0x12, b"")));
        assert_eq!(out.verdict, REDIRECT, "out of the uplink");
        let expected = packet(ROUTER_MAC, UPLINK_MAC, Ip { src: UPLINK_IP, ttl: 63, ..answer }, tcp_segment(PUBLISHED_PORT, 20_000, 0x12, b""));
        assert_eq!(out.packet, expected);

        // The TC program makes the same bytes of the same kind of packet.
        let out = lab.from_uplink(&from_client(21_000, 0x02, b""));
        let b = predicted(&table, CLIENT_IP, UPLINK_IP, 21_000, PUBLISHED_PORT, TCP);
        assert_eq!((out.verdict, out.packet), (REDIRECT, at_backend(b, 21_000, 0x02, b"")));
    });
}

#[test]
fn udp_to_a_published_port_and_replies_to_masquerade_are_exact_in_xdp() {
    TestNetns::new("xdp-nat").run(XDP, |lab| {
        lab.add_container(PUBLISHER_IP, PUBLISHER_MAC, PUBLISHER_IFINDEX, 2, PUBLISHER_GATEWAY);
        lab.publish(None, 5353, UDP, PUBLISHER_IP, 53);
        let client = Ip { proto: UDP, ..client_ip() };
        let delivered = Ip { dst: PUBLISHER_IP, ttl: 59, ..client };
        let out = lab.from_uplink_xdp(&packet(UPLINK_MAC, ROUTER_MAC, client, udp_datagram(7000, 5353, b"query")));
        assert_eq!(out.verdict, XDP_REDIRECT);
        assert_eq!(out.packet, packet(PUBLISHER_MAC, GATEWAY_MAC, delivered, udp_datagram(7000, 53, b"query")));

        // A datagram without a checksum (0) stays without.
        let bare = |ip: &Ip, dport: u16| frame(if dport == 53 { PUBLISHER_MAC } else { UPLINK_MAC }, if dport == 53 { GATEWAY_MAC } else { ROUTER_MAC }, ip, &udp_datagram(7001, dport, b"no sum"));
        let out = lab.from_uplink_xdp(&bare(&client, 5353));
        assert_eq!((out.verdict, out.packet), (XDP_REDIRECT, bare(&delivered, 53)));

        // A translated sum that comes out as 0 is written 0xffff (0 would mean "none").
        let payload = (0..=u16::MAX)
            .map(|p| p.to_be_bytes())
            .find(|p| l4(&delivered, udp_datagram(7002, 53, p), None)[6..8] == [0, 0])
            .expect("some payload sums to zero");
        let out = lab.from_uplink_xdp(&packet(UPLINK_MAC, ROUTER_MAC, client, udp_datagram(7002, 5353, &payload)));
        let mut expected = packet(PUBLISHER_MAC, GATEWAY_MAC, delivered, udp_datagram(7002, 53, &payload));
        expected[L4 + 6..L4 + 8].copy_from_slice(&[0xff, 0xff]);
        assert_eq!((out.verdict, out.packet), (XDP_REDIRECT, expected));

        // A masqueraded connection (out at TC), its reply in XDP.
        let syn = packet(GATEWAY_MAC, CONTAINER_MAC, from_container(CONTAINER_IP, TCP, 64), tcp_segment(40000, 80, 0x02, b""));
        let out = lab.from_container(&syn);
        assert_eq!(out.verdict, REDIRECT);
        let nat_port = port_at(&out.packet, L4);
        let server = Ip { src: SERVER_IP, dst: UPLINK_IP, proto: TCP, ttl: 50, id: 7, frag: 0x4000 };
        let out = lab.from_uplink_xdp(&packet(UPLINK_MAC, ROUTER_MAC, server, tcp_segment(80, nat_port, 0x12, b"hello")));
        assert_eq!(out.verdict, XDP_REDIRECT, "into the container");
        let expected = packet(CONTAINER_MAC, GATEWAY_MAC, Ip { dst: CONTAINER_IP, ttl: 49, ..server }, tcp_segment(80, 40000, 0x12, b"hello"));
        assert_eq!(out.packet, expected);
        assert_eq!(lab.counter(Counter::XdpNatIn), 4);
    });
}

#[test]
fn what_xdp_cannot_do_passes_untouched_to_tc() {
    TestNetns::new("xdp-pass").run(XDP, |lab| {
        install(lab, TCP, &[0, 1, 2], 0);
        let syn = from_client(30_000, 0x02, b"");
        let mut cases: Vec<(&str, Vec<u8>)> = Vec::new();

        // A checksum left to offload: the field holds the pseudo-header's sum, not complemented.
        let mut offloaded = syn.clone();
        let pseudo = [&CLIENT_IP[..], &UPLINK_IP[..], &[0, TCP], &20u16.to_be_bytes()].concat();
        offloaded[L4 + 16..L4 + 18].copy_from_slice(&(!checksum(&[&pseudo])).to_be_bytes());
        cases.push(("a checksum left to offload", offloaded));

        // An IP header with options (a 4-byte NOP padding): variable offsets are TC's.
        let mut with_options = syn[..14].to_vec();
        let segment = l4(&client_ip(), tcp_segment(30_000, PUBLISHED_PORT, 0x02, b""), None);
        let mut header = ip_header(&client_ip(), segment.len() + 4);
        header[0] = 0x46;
        header.extend_from_slice(&[1, 1, 1, 0]);
        header[10..12].copy_from_slice(&[0, 0]);
        let c = checksum(&[&header]);
        header[10..12].copy_from_slice(&c.to_be_bytes());
        with_options.extend_from_slice(&header);
        with_options.extend_from_slice(&segment);
        cases.push(("IP options", with_options));

        cases.push(("a first fragment", packet(UPLINK_MAC, ROUTER_MAC, Ip { frag: 0x2000, ..client_ip() }, tcp_segment(30_000, PUBLISHED_PORT, 0x02, b""))));
        cases.push(("ICMP", packet(UPLINK_MAC, ROUTER_MAC, Ip { proto: ICMP, ..client_ip() }, icmp_echo(8, 7, 1))));
        cases.push(("a TTL about to expire", packet(UPLINK_MAC, ROUTER_MAC, Ip { ttl: 1, ..client_ip() }, tcp_segment(30_000, PUBLISHED_PORT, 0x02, b""))));
        cases.push(("a frame over 1514 bytes", from_client(30_000, 0x02, &[7u8; 1500])));
        cases.push(("a port nobody published", packet(UPLINK_MAC, ROUTER_MAC, client_ip(), tcp_segment(30_000, 9999, 0x02, b""))));
        cases.push(("an ACK of no connection", from_client(30_001, 0x10, b"")));
        let mut arp = vec![0xff; 6];
        arp.extend_from_slice(&ROUTER_MAC);
        arp.extend_from_slice(&[0x08, 0x06, 0, 1, 8, 0, 6, 4, 0, 1]);
        arp.extend_from_slice(&[0; 28 - 8]);
        cases.push(("ARP", arp));
        for (what, frame) in &cases {
            let out = lab.from_uplink_xdp(frame);
            assert_eq!((out.verdict, &out.packet), (XDP_PASS, frame), "{what}: passed on untouched");
        }

        // A container whose side has no NAPI (no XDP_DELIVERY): TC delivers.
        lab.flags = MASQ;
        lab.add_container(PUBLISHER_IP, PUBLISHER_MAC, PUBLISHER_IFINDEX, 2, PUBLISHER_GATEWAY);
        lab.publish(None, 9000, TCP, PUBLISHER_IP, 80);
        let to_publisher = packet(UPLINK_MAC, ROUTER_MAC, client_ip(), tcp_segment(30_002, 9000, 0x02, b""));
        let out = lab.from_uplink_xdp(&to_publisher);
        assert_eq!((out.verdict, &out.packet), (XDP_PASS, &to_publisher), "no NAPI behind the veth: passed on");
        assert_eq!(lab.from_uplink(&to_publisher).verdict, REDIRECT, "TC delivers it");

        // A service without backends: TC refuses the connection (a reset it builds).
        lab.dp.set_service(SERVICE, ServiceInfo { table_base: 0, table_size: M, backends: 0, _pad: 0, affinity_ns: 0 }).unwrap();
        let out = lab.from_uplink_xdp(&syn);
        assert_eq!((out.verdict, &out.packet), (XDP_PASS, &syn), "an empty service: passed on");
        assert_eq!(lab.from_uplink(&syn).verdict, REDIRECT, "TC sends the reset");
        assert_eq!(lab.counter(Counter::ServiceRejected), 1);

        assert_eq!(lab.counter(Counter::XdpNatIn) + lab.counter(Counter::XdpServiceBalanced), 0, "XDP handled none");
    });
}
