//! NAT datapath tests: the real programs on hand-made packets (BPF_PROG_TEST_RUN), every rewritten
//! packet compared byte for byte with one built here from scratch, checksums computed here
//! independently of the kernel's incremental updates.
//!
//! Masquerade needs a FIB answer, and a test run looks routes up in the caller's namespace: each
//! test runs in a private namespace with an "uplink" (192.0.2.1/24 on up0, default route via
//! 192.0.2.254 whose MAC is a permanent neighbour entry), so the answer is known exactly.
//! Needs root.
mod lab;


use bpfnet::test_run::time_tc;
use datapath_common::{iface_flags, port_flags, Counter, CtKey, IpKey, GATEWAY_MAC};
use lab::*;

// ---- tests ----

#[test]
fn tcp_is_masqueraded_out_of_the_uplink_and_replies_are_translated_back() {
    TestNetns::new("tcp").run(MASQ, |lab| {
        let syn = packet(GATEWAY_MAC, CONTAINER_MAC, from_container(CONTAINER_IP, TCP, 64), tcp_segment(40000, 80, 0x02, b""));
        let out = lab.from_container(&syn);
        assert_eq!(out.verdict, REDIRECT, "sent out of the uplink");
        let nat_port = port_at(&out.packet, L4);
        assert_eq!(nat_port, 40000, "the container's port is kept where it is free, as iptables does");
        let expected = packet(
            ROUTER_MAC,
            UPLINK_MAC,
            Ip { src: UPLINK_IP, ttl: 63, ..from_container(CONTAINER_IP, TCP, 64) },
            tcp_segment(nat_port, 80, 0x02, b""),
        );
        assert_eq!(out.packet, expected, "addresses, port, TTL, MACs and both checksums exact");

        // The next packet of the connection takes the same translation.
        let data = packet(GATEWAY_MAC, CONTAINER_MAC, from_container(CONTAINER_IP, TCP, 64), tcp_segment(40000, 80, 0x18, b"GET /"));
        let out = lab.from_container(&data);
        assert_eq!(port_at(&out.packet, L4), nat_port);

        // The server's answer to the uplink address goes back into the container.
        let server = Ip { src: SERVER_IP, dst: UPLINK_IP, proto: TCP, ttl: 50, id: 7, frag: 0x4000 };
        let reply = packet(UPLINK_MAC, ROUTER_MAC, server, tcp_segment(80, nat_port, 0x12, b"hello"));
        let out = lab.from_uplink(&reply);
        assert_eq!(out.verdict, REDIRECT, "delivered into the container");
        let expected = packet(
            CONTAINER_MAC,
            GATEWAY_MAC,
            Ip { src: SERVER_IP, dst: CONTAINER_IP, proto: TCP, ttl: 49, id: 7, frag: 0x4000 },
            tcp_segment(80, 40000, 0x12, b"hello"),
        );
        assert_eq!(out.packet, expected);
        assert_eq!(lab.counter(Counter::NatOut), 2);
        assert_eq!(lab.counter(Counter::NatIn), 1);

        // Another container using the same source port to the same server gets another port.
        lab.send_as(OTHER_CONTAINER_IP, OTHER_CONTAINER_MAC);
        let syn = packet(GATEWAY_MAC, OTHER_CONTAINER_MAC, from_container(OTHER_CONTAINER_IP, TCP, 64), tcp_segment(40000, 80, 0x02, b""));
        let out = lab.from_container(&syn);
        assert_eq!(out.verdict, REDIRECT);
        let other_port = port_at(&out.packet, L4);
        assert_ne!(other_port, nat_port, "two connections never share a reply tuple");
        assert!(NAT_PORTS.contains(&other_port), "the next one comes from the masquerade range: {other_port}");
        let reply = packet(UPLINK_MAC, ROUTER_MAC, Ip { src: SERVER_IP, dst: UPLINK_IP, proto: TCP, ttl: 50, id: 8, frag: 0 }, tcp_segment(80, other_port, 0x12, b""));
        let out = lab.from_uplink(&reply);
        assert_eq!(&out.packet[0..6], &OTHER_CONTAINER_MAC, "the reply reaches the other container");
        assert_eq!(&out.packet[14 + 16..14 + 20], &OTHER_CONTAINER_IP);

        // A port a socket of the host holds is never taken.
        let _listener = std::net::TcpListener::bind("0.0.0.0:40001").unwrap();
        let syn = packet(GATEWAY_MAC, OTHER_CONTAINER_MAC, from_container(OTHER_CONTAINER_IP, TCP, 64), tcp_segment(40001, 80, 0x02, b""));
        let out = lab.from_container(&syn);
        assert!(NAT_PORTS.contains(&port_at(&out.packet, L4)), "not 40001, where the host listens");

        // An unknown reply is the host's.
        let stray = packet(UPLINK_MAC, ROUTER_MAC, Ip { src: SERVER_IP, dst: UPLINK_IP, proto: TCP, ttl: 50, id: 9, frag: 0 }, tcp_segment(80, 1234, 0x12, b""));
        let out = lab.from_uplink(&stray);
        assert_eq!((out.verdict, out.packet), (PASS, stray));
        assert_eq!(lab.counter(Counter::UplinkToHost), 1);
    });
}

#[test]
fn udp_is_masqueraded_with_exact_checksums_and_a_zero_checksum_stays_zero() {
    TestNetns::new("udp").run(MASQ, |lab| {
        let query = packet(GATEWAY_MAC, CONTAINER_MAC, from_container(CONTAINER_IP, UDP, 64), udp_datagram(5353, 53, b"query"));
        let out = lab.from_container(&query);
        assert_eq!(out.verdict, REDIRECT);
        let nat_port = port_at(&out.packet, L4);
        let expected = packet(ROUTER_MAC, UPLINK_MAC, Ip { src: UPLINK_IP, ttl: 63, ..from_container(CONTAINER_IP, UDP, 64) }, udp_datagram(nat_port, 53, b"query"));
        assert_eq!(out.packet, expected);

        let answer = packet(UPLINK_MAC, ROUTER_MAC, Ip { src: SERVER_IP, dst: UPLINK_IP, proto: UDP, ttl: 60, id: 3, frag: 0 }, udp_datagram(53, nat_port, b"answer"));
        let out = lab.from_uplink(&answer);
        assert_eq!(out.verdict, REDIRECT);
        let expected = packet(CONTAINER_MAC, GATEWAY_MAC, Ip { src: SERVER_IP, dst: CONTAINER_IP, proto: UDP, ttl: 59, id: 3, frag: 0 }, udp_datagram(53, 5353, b"answer"));
        assert_eq!(out.packet, expected);

        // UDP without a checksum (0): translated, and the field stays 0.
        let ip = from_container(CONTAINER_IP, UDP, 64);
        let bare = frame(GATEWAY_MAC, CONTAINER_MAC, &ip, &udp_datagram(6000, 53, b"no checksum"));
        let out = lab.from_container(&bare);
        assert_eq!(out.verdict, REDIRECT);
        let port = port_at(&out.packet, L4);
        let expected = frame(ROUTER_MAC, UPLINK_MAC, &Ip { src: UPLINK_IP, ttl: 63, ..ip }, &udp_datagram(port, 53, b"no checksum"));
        assert_eq!(out.packet, expected);
    });
}

#[test]
fn fragments_of_a_large_datagram_follow_their_first_fragment() {
    TestNetns::new("frag").run(MASQ, |lab| {
        // A 1400-byte datagram cut into a first fragment (UDP header + 1000 bytes) and a later one.
        let payload: Vec<u8> = (0..1400u32).map(|i| (i * 7) as u8).collect();
        let whole = udp_datagram(7000, 9000, &payload);
        let ip = Ip { src: CONTAINER_IP, dst: SERVER_IP, proto: UDP, ttl: 64, id: 0x2222, frag: 0 };
        let whole = l4(&ip, whole, None);
        let (first, rest) = whole.split_at(1008);
        let first_ip = Ip { frag: 0x2000, ..ip };
        let later_ip = Ip { frag: (1008 / 8) as u16, ..ip };
        let out_first = lab.from_container(&frame(GATEWAY_MAC, CONTAINER_MAC, &first_ip, first));
        assert_eq!(out_first.verdict, REDIRECT);
        let nat_port = port_at(&out_first.packet, L4);
        let out_later = lab.from_container(&frame(GATEWAY_MAC, CONTAINER_MAC, &later_ip, rest));
        assert_eq!(out_later.verdict, REDIRECT, "the later fragment is translated too");

        // What the server reassembles: the datagram from the uplink's address and port, with a
        // UDP checksum that is right for the whole of it.
        let nat_ip = Ip { src: UPLINK_IP, ..ip };
        let nat_whole = l4(&nat_ip, udp_datagram(nat_port, 9000, &payload), None);
        let expected_first = frame(ROUTER_MAC, UPLINK_MAC, &Ip { ttl: 63, frag: 0x2000, ..nat_ip }, &nat_whole[..1008]);
        let expected_later = frame(ROUTER_MAC, UPLINK_MAC, &Ip { ttl: 63, frag: (1008 / 8) as u16, ..nat_ip }, &nat_whole[1008..]);
        // The fragments' IP headers carry their own lengths.
        assert_eq!(out_first.packet, expected_first);
        assert_eq!(out_later.packet, expected_later);
    });
}

#[test]
fn ping_is_masqueraded_by_its_identifier() {
    TestNetns::new("icmp").run(MASQ, |lab| {
        let request = packet(GATEWAY_MAC, CONTAINER_MAC, from_container(CONTAINER_IP, ICMP, 64), icmp_echo(8, 0x4242, 1));
        let out = lab.from_container(&request);
        assert_eq!(out.verdict, REDIRECT);
        let nat_id = port_at(&out.packet, L4 + 4);
        assert_eq!(nat_id, 0x4242, "the identifier is kept where it is free");
        let expected = packet(ROUTER_MAC, UPLINK_MAC, Ip { src: UPLINK_IP, ttl: 63, ..from_container(CONTAINER_IP, ICMP, 64) }, icmp_echo(8, nat_id, 1));
        assert_eq!(out.packet, expected);

        let reply = packet(UPLINK_MAC, ROUTER_MAC, Ip { src: SERVER_IP, dst: UPLINK_IP, proto: ICMP, ttl: 60, id: 5, frag: 0 }, icmp_echo(0, nat_id, 1));
        let out = lab.from_uplink(&reply);
        assert_eq!(out.verdict, REDIRECT);
        let expected = packet(CONTAINER_MAC, GATEWAY_MAC, Ip { src: SERVER_IP, dst: CONTAINER_IP, proto: ICMP, ttl: 59, id: 5, frag: 0 }, icmp_echo(0, 0x4242, 1));
        assert_eq!(out.packet, expected);
    });
}

#[test]
fn icmp_errors_about_a_masqueraded_connection_reach_the_container() {
    TestNetns::new("icmperr").run(MASQ, |lab| {
        let data = packet(GATEWAY_MAC, CONTAINER_MAC, from_container(CONTAINER_IP, TCP, 64), tcp_segment(40000, 80, 0x18, &[0u8; 64]));
        let out = lab.from_container(&data);
        let nat_port = port_at(&out.packet, L4);
        // A router on the way says "fragmentation needed, MTU 1400", quoting what it got: the
        // translated IP header and the first 8 bytes of its TCP header.
        let quote = |src: [u8; 4], sport: u16| {
            let sent_ip = Ip { src, ttl: 63, ..from_container(CONTAINER_IP, TCP, 64) };
            icmp_quote(&sent_ip, &l4(&sent_ip, tcp_segment(sport, 80, 0x18, &[0u8; 64]), None))
        };
        let mut error = vec![3, 4, 0, 0, 0, 0, 0x05, 0x78];
        error.extend_from_slice(&quote(UPLINK_IP, nat_port));
        let router = Ip { src: ROUTER_IP, dst: UPLINK_IP, proto: ICMP, ttl: 64, id: 1, frag: 0 };
        let out = lab.from_uplink(&packet(UPLINK_MAC, ROUTER_MAC, router, error));
        assert_eq!(out.verdict, REDIRECT, "delivered to the container");
        let mut translated = vec![3, 4, 0, 0, 0, 0, 0x05, 0x78];
        translated.extend_from_slice(&quote(CONTAINER_IP, 40000));
        let expected = packet(CONTAINER_MAC, GATEWAY_MAC, Ip { src: ROUTER_IP, dst: CONTAINER_IP, proto: ICMP, ttl: 63, id: 1, frag: 0 }, translated);
        assert_eq!(out.packet, expected, "outer destination, quoted source and port, and all three checksums exact");
        assert_eq!(lab.counter(Counter::NatIcmpError), 1);

        // An error about a masqueraded ping ("time exceeded" on the way): the quoted echo
        // request's identifier and its checksum are the container's again.
        let ping = packet(GATEWAY_MAC, CONTAINER_MAC, from_container(CONTAINER_IP, ICMP, 64), icmp_echo(8, 0x4242, 1));
        let out = lab.from_container(&ping);
        assert_eq!(out.verdict, REDIRECT);
        let nat_id = port_at(&out.packet, L4 + 4);
        let echo_quote = |src: [u8; 4], id: u16| {
            let sent_ip = Ip { src, ttl: 63, ..from_container(CONTAINER_IP, ICMP, 64) };
            icmp_quote(&sent_ip, &l4(&sent_ip, icmp_echo(8, id, 1), None))
        };
        let mut error = vec![11, 0, 0, 0, 0, 0, 0, 0];
        error.extend_from_slice(&echo_quote(UPLINK_IP, nat_id));
        let router = Ip { src: ROUTER_IP, dst: UPLINK_IP, proto: ICMP, ttl: 64, id: 5, frag: 0 };
        let out = lab.from_uplink(&packet(UPLINK_MAC, ROUTER_MAC, router, error));
        assert_eq!(out.verdict, REDIRECT);
        let mut translated = vec![11, 0, 0, 0, 0, 0, 0, 0];
        translated.extend_from_slice(&echo_quote(CONTAINER_IP, 0x4242));
        let expected = packet(CONTAINER_MAC, GATEWAY_MAC, Ip { dst: CONTAINER_IP, ttl: 63, ..router }, translated);
        assert_eq!(out.packet, expected);

        // An error about a connection the datapath does not know is the host's.
        let mut unknown = vec![3, 3, 0, 0, 0, 0, 0, 0];
        unknown.extend_from_slice(&quote(UPLINK_IP, 1111));
        let p = packet(UPLINK_MAC, ROUTER_MAC, Ip { src: ROUTER_IP, dst: UPLINK_IP, proto: ICMP, ttl: 64, id: 2, frag: 0 }, unknown);
        let out = lab.from_uplink(&p);
        assert_eq!((out.verdict, out.packet), (PASS, p));

        // The genuine error again, from the LAN but with another container's address as its
        // source: screened as any packet from outside, never delivered.
        let other = [10, 0, 0, 3];
        lab.dp.set_endpoint(std::net::IpAddr::from(other), datapath_common::EndpointInfo { host_ifindex: 99, network_id: 1, ..Default::default() }).unwrap();
        let mut error = vec![3, 4, 0, 0, 0, 0, 0x05, 0x78];
        error.extend_from_slice(&quote(UPLINK_IP, nat_port));
        let forged = Ip { src: other, dst: UPLINK_IP, proto: ICMP, ttl: 64, id: 3, frag: 0 };
        let out = lab.from_uplink(&packet(UPLINK_MAC, ROUTER_MAC, forged, error));
        assert_eq!((out.verdict, lab.counter(Counter::DropUplinkSpoofed)), (DROP, 1));
        assert_eq!(lab.counter(Counter::NatIcmpError), 2);
    });
}

#[test]
fn icmp_errors_a_container_sends_about_translated_packets_leave_translated() {
    TestNetns::new("icmpout").run(MASQ, |lab| {
        lab.add_container(CONTAINER_IP, CONTAINER_MAC, TEST_IFINDEX, 1, GATEWAY_IP);
        // The first 28 bytes of a datagram as `ip` carries it: what an ICMP error quotes.
        let quote = |ip: &Ip, sport: u16, dport: u16| icmp_quote(ip, &l4(ip, udp_datagram(sport, dport, b"query"), None));
        let container_error = |quoted: Vec<u8>, dst: [u8; 4]| {
            let mut error = vec![3, 3, 0, 0, 0, 0, 0, 0];
            error.extend_from_slice(&quoted);
            packet(GATEWAY_MAC, CONTAINER_MAC, Ip { src: CONTAINER_IP, dst, proto: ICMP, ttl: 64, id: 3, frag: 0 }, error)
        };

        // A datagram to a published UDP port nobody listens on in the container.
        lab.publish(None, 5353, UDP, CONTAINER_IP, 53);
        let client = Ip { src: CLIENT_IP, dst: UPLINK_IP, proto: UDP, ttl: 55, id: 9, frag: 0x4000 };
        let inbound = lab.from_uplink(&packet(UPLINK_MAC, ROUTER_MAC, client, udp_datagram(5555, 5353, b"query")));
        assert_eq!(inbound.verdict, REDIRECT);
        let received = Ip { dst: CONTAINER_IP, ttl: 54, ..client };
        assert_eq!(&inbound.packet[14..42], &quote(&received, 5555, 53)[..], "what the container got");
        // Its "port unreachable" leaves from the address the client sent to, quoting what the
        // client sent (TTL as it arrived); outer, quoted IP, quoted UDP and ICMP checksums exact.
        let out = lab.from_container(&container_error(quote(&received, 5555, 53), CLIENT_IP));
        assert_eq!(out.verdict, REDIRECT, "routed out of the uplink");
        let mut translated = vec![3, 3, 0, 0, 0, 0, 0, 0];
        translated.extend_from_slice(&quote(&Ip { ttl: 54, ..client }, 5555, 5353));
        let expected = packet(ROUTER_MAC, UPLINK_MAC, Ip { src: UPLINK_IP, dst: CLIENT_IP, proto: ICMP, ttl: 63, id: 3, frag: 0 }, translated);
        assert_eq!(out.packet, expected);

        // An answer to a masqueraded datagram whose socket is gone: the error leaves from the
        // uplink's address, quoting the answer as the server sent it (to the masquerade port).
        let query = packet(GATEWAY_MAC, CONTAINER_MAC, from_container(CONTAINER_IP, UDP, 64), udp_datagram(5001, 53, b"query"));
        let nat_port = port_at(&lab.from_container(&query).packet, L4);
        let server = Ip { src: SERVER_IP, dst: UPLINK_IP, proto: UDP, ttl: 50, id: 7, frag: 0 };
        let answer = lab.from_uplink(&packet(UPLINK_MAC, ROUTER_MAC, server, udp_datagram(53, nat_port, b"query")));
        assert_eq!(answer.verdict, REDIRECT);
        let got = Ip { dst: CONTAINER_IP, ttl: 49, ..server };
        let out = lab.from_container(&container_error(quote(&got, 53, 5001), SERVER_IP));
        assert_eq!(out.verdict, REDIRECT);
        let mut translated = vec![3, 3, 0, 0, 0, 0, 0, 0];
        translated.extend_from_slice(&quote(&Ip { ttl: 49, ..server }, 53, nat_port));
        let expected = packet(ROUTER_MAC, UPLINK_MAC, Ip { src: UPLINK_IP, dst: SERVER_IP, proto: ICMP, ttl: 63, id: 3, frag: 0 }, translated);
        assert_eq!(out.packet, expected);
        assert_eq!(lab.counter(Counter::NatIcmpError), 2);

        // The other way, for UDP too: a router's error about the query as it left (from the
        // uplink's address and port) reaches the container quoting the query as the container
        // sent it, the quoted UDP checksum included.
        let left = Ip { src: UPLINK_IP, ttl: 63, ..from_container(CONTAINER_IP, UDP, 64) };
        let mut error = vec![3, 3, 0, 0, 0, 0, 0, 0];
        error.extend_from_slice(&quote(&left, nat_port, 53));
        let router = Ip { src: ROUTER_IP, dst: UPLINK_IP, proto: ICMP, ttl: 64, id: 4, frag: 0 };
        let out = lab.from_uplink(&packet(UPLINK_MAC, ROUTER_MAC, router, error));
        assert_eq!(out.verdict, REDIRECT);
        let mut translated = vec![3, 3, 0, 0, 0, 0, 0, 0];
        translated.extend_from_slice(&quote(&Ip { ttl: 63, ..from_container(CONTAINER_IP, UDP, 64) }, 5001, 53));
        let expected = packet(CONTAINER_MAC, GATEWAY_MAC, Ip { src: ROUTER_IP, dst: CONTAINER_IP, ttl: 63, ..router }, translated);
        assert_eq!(out.packet, expected);

        // An error quoting another container's connection is not this container's to send:
        // the host's, untouched (the publisher's datagram, quoted by the test container).
        lab.add_container(PUBLISHER_IP, PUBLISHER_MAC, PUBLISHER_IFINDEX, 1, GATEWAY_IP);
        lab.publish(None, 6000, UDP, PUBLISHER_IP, 60);
        let to_publisher = lab.from_uplink(&packet(UPLINK_MAC, ROUTER_MAC, client, udp_datagram(5556, 6000, b"query")));
        assert_eq!(to_publisher.verdict, REDIRECT);
        let forged = container_error(to_publisher.packet[14..42].to_vec(), CLIENT_IP);
        let out = lab.from_container(&forged);
        assert_eq!((out.verdict, out.packet), (PASS, forged), "not translated for another container");

        // Nor an error about its own connection sent elsewhere than to whoever sent the quoted packet.
        let elsewhere = container_error(quote(&received, 5555, 53), SERVER_IP);
        let out = lab.from_container(&elsewhere);
        assert_eq!((out.verdict, out.packet), (PASS, elsewhere));

        // An error about a packet the datapath did not translate is the host's, untouched.
        let stray = container_error(quote(&Ip { dst: CONTAINER_IP, ..client }, 1, 2), CLIENT_IP);
        let out = lab.from_container(&stray);
        assert_eq!((out.verdict, out.packet), (PASS, stray));
    });
}

#[test]
fn no_masquerade_leaves_the_packet_to_the_host_and_internal_networks_never_leave() {
    TestNetns::new("nomasq").run(0, |lab| {
        let syn = packet(GATEWAY_MAC, CONTAINER_MAC, from_container(CONTAINER_IP, TCP, 64), tcp_segment(40000, 80, 0x02, b""));
        let out = lab.from_container(&syn);
        assert_eq!((out.verdict, out.packet), (PASS, syn.clone()), "masquerade=false: untouched, to the host");
        assert_eq!(lab.counter(Counter::NatOut), 0);
    });
    TestNetns::new("internal").run(iface_flags::INTERNAL, |lab| {
        let syn = packet(GATEWAY_MAC, CONTAINER_MAC, from_container(CONTAINER_IP, TCP, 64), tcp_segment(40000, 80, 0x02, b""));
        assert_eq!(lab.from_container(&syn).verdict, DROP);
        assert_eq!(lab.counter(Counter::DropInternal), 1);
    });
}

#[test]
fn an_expiring_ttl_or_a_packet_too_big_for_the_uplink_is_left_to_the_host() {
    TestNetns::new("ttl").run(MASQ, |lab| {
        let p = packet(GATEWAY_MAC, CONTAINER_MAC, from_container(CONTAINER_IP, UDP, 1), udp_datagram(33434, 33434, b"traceroute"));
        let out = lab.from_container(&p);
        assert_eq!(out.verdict, PASS, "the host sends 'time exceeded'");
        assert_eq!(lab.counter(Counter::NatOut), 0);

        // A reply whose TTL runs out on the way in is dropped, not handed to the host (which
        // would reset the container's connection).
        let q = packet(GATEWAY_MAC, CONTAINER_MAC, from_container(CONTAINER_IP, UDP, 64), udp_datagram(5000, 53, b"q"));
        let port = port_at(&lab.from_container(&q).packet, L4);
        let reply = packet(UPLINK_MAC, ROUTER_MAC, Ip { src: SERVER_IP, dst: UPLINK_IP, proto: UDP, ttl: 1, id: 3, frag: 0 }, udp_datagram(53, port, b"a"));
        assert_eq!(lab.from_uplink(&reply).verdict, DROP);
        assert_eq!(lab.counter(Counter::DropTtlExpired), 1);
    });
    let ns = TestNetns::new("mtu");
    ip(&["-n", &ns.name, "link", "set", "up0", "mtu", "1280"]);
    ns.run(MASQ, |lab| {
        let big = packet(GATEWAY_MAC, CONTAINER_MAC, from_container(CONTAINER_IP, UDP, 64), udp_datagram(5001, 53, &[7u8; 1400]));
        let out = lab.from_container(&big);
        assert_eq!((out.verdict, out.packet), (PASS, big), "untranslated, for the host to answer 'fragmentation needed'");
        let small = packet(GATEWAY_MAC, CONTAINER_MAC, from_container(CONTAINER_IP, UDP, 64), udp_datagram(5001, 53, &[7u8; 1000]));
        assert_eq!(lab.from_container(&small).verdict, REDIRECT);
    });
}

#[test]
fn a_published_port_takes_only_new_connections_the_host_does_not_hold() {
    TestNetns::new("pubnew").run(MASQ, |lab| {
        lab.add_container(CONTAINER_IP, CONTAINER_MAC, TEST_IFINDEX, 1, GATEWAY_IP);
        lab.publish(None, 8080, TCP, CONTAINER_IP, 80);
        lab.publish(None, 8443, TCP, CONTAINER_IP, 443);
        let client = Ip { src: CLIENT_IP, dst: UPLINK_IP, proto: TCP, ttl: 55, id: 9, frag: 0x4000 };
        // Not a connection's first packet: the host's (an answer to one of its own connections).
        let ack = packet(UPLINK_MAC, ROUTER_MAC, client, tcp_segment(5555, 8080, 0x10, b""));
        assert_eq!(lab.from_uplink(&ack).verdict, PASS);
        // A host socket on the port keeps it.
        let _host_service = std::net::TcpListener::bind("0.0.0.0:8443").unwrap();
        let syn = packet(UPLINK_MAC, ROUTER_MAC, client, tcp_segment(5556, 8443, 0x02, b""));
        assert_eq!(lab.from_uplink(&syn).verdict, PASS);
        // Multicast is not an address of the host.
        let mcast = packet(UPLINK_MAC, ROUTER_MAC, Ip { dst: [239, 1, 1, 1], proto: UDP, ..client }, udp_datagram(5557, 8080, b"m"));
        lab.publish(None, 8080, UDP, CONTAINER_IP, 80);
        assert_eq!(lab.from_uplink(&mcast).verdict, PASS);
        // And a SYN to a published port nobody holds goes in.
        let syn = packet(UPLINK_MAC, ROUTER_MAC, client, tcp_segment(5558, 8080, 0x02, b""));
        assert_eq!(lab.from_uplink(&syn).verdict, REDIRECT);

        // A publication over host listeners (a runtime's port reservations: Podman's conmon)
        // takes new connections and datagrams a listener or an unconnected socket holds ...
        lab.publish_with_flags(None, 8443, TCP, CONTAINER_IP, 443, port_flags::OVER_HOST_LISTENERS);
        let syn = packet(UPLINK_MAC, ROUTER_MAC, client, tcp_segment(5559, 8443, 0x02, b""));
        assert_eq!(lab.from_uplink(&syn).verdict, REDIRECT, "over the listener");
        let _reservation = std::net::UdpSocket::bind("0.0.0.0:8053").unwrap();
        lab.publish_with_flags(None, 8053, UDP, CONTAINER_IP, 53, port_flags::OVER_HOST_LISTENERS);
        let dgram = packet(UPLINK_MAC, ROUTER_MAC, Ip { proto: UDP, ..client }, udp_datagram(5560, 8053, b"q"));
        assert_eq!(lab.from_uplink(&dgram).verdict, REDIRECT, "over the unconnected UDP socket");
        // ... but not the answers to the host's own flows (a connected socket).
        let own = std::net::UdpSocket::bind("0.0.0.0:8054").unwrap();
        own.connect((std::net::Ipv4Addr::from(CLIENT_IP), 5561)).unwrap();
        lab.publish_with_flags(None, 8054, UDP, CONTAINER_IP, 54, port_flags::OVER_HOST_LISTENERS);
        let answer = packet(UPLINK_MAC, ROUTER_MAC, Ip { proto: UDP, ..client }, udp_datagram(5561, 8054, b"a"));
        assert_eq!(lab.from_uplink(&answer).verdict, PASS, "the host's own flow");
    });
}

#[test]
fn masquerade_never_keeps_a_source_port_that_would_shadow_a_publication() {
    TestNetns::new("shadow").run(MASQ, |lab| {
        // Another container (behind another veth) publishes 8080/tcp on every address.
        lab.add_container(CONTAINER_IP, CONTAINER_MAC, TEST_IFINDEX, 1, GATEWAY_IP);
        lab.publish(None, 8080, TCP, [10, 0, 0, 3], 80);
        // A container's connection from port 8080 to a client's port: kept, the tuple
        // (client -> uplink:8080) would be the masquerade's, and the client's connections to
        // the publication would reach this container. Another port is drawn.
        let syn = |sport: u16, dport: u16| packet(GATEWAY_MAC, CONTAINER_MAC, from_container(CONTAINER_IP, TCP, 64), tcp_segment(sport, dport, 0x02, b""));
        let out = lab.from_container(&syn(8080, 51000));
        assert_eq!(out.verdict, REDIRECT);
        assert_ne!(port_at(&out.packet, L4), 8080, "the published port is not the masquerade's");
        // A well-known source port to an ephemeral one is never kept (Linux's CVE-2021-3773
        // rule): it would shadow a connection the peer makes to that port of the host.
        let out = lab.from_container(&syn(443, 40000));
        assert_ne!(port_at(&out.packet, L4), 443);
        // A source port kept as ever otherwise: an unprivileged port, or a well-known one to a
        // well-known one.
        let out = lab.from_container(&syn(45000, 443));
        assert_eq!(port_at(&out.packet, L4), 45000);
        let out = lab.from_container(&packet(GATEWAY_MAC, CONTAINER_MAC, from_container(CONTAINER_IP, UDP, 64), udp_datagram(123, 123, b"ntp")));
        assert_eq!(port_at(&out.packet, L4), 123);
    });
}

#[test]
fn a_published_port_never_takes_over_a_connection_the_container_made() {
    TestNetns::new("clash").run(MASQ, |lab| {
        // The container asks SERVER_IP:53 from its port 5353 (masqueraded) and publishes that
        // port as 5354/udp.
        lab.add_container(CONTAINER_IP, CONTAINER_MAC, TEST_IFINDEX, 1, GATEWAY_IP);
        lab.publish(None, 5354, UDP, CONTAINER_IP, 5353);
        let query = packet(GATEWAY_MAC, CONTAINER_MAC, from_container(CONTAINER_IP, UDP, 64), udp_datagram(5353, 53, b"query"));
        let out = lab.from_container(&query);
        assert_eq!(out.verdict, REDIRECT);
        let nat_port = port_at(&out.packet, L4);
        // A datagram spoofed from SERVER_IP:53 to the published port: its answers' tuple
        // (10.0.0.2:5353 -> SERVER_IP:53) is the container's own connection. Refused.
        let spoofed = packet(UPLINK_MAC, ROUTER_MAC, Ip { src: SERVER_IP, dst: UPLINK_IP, proto: UDP, ttl: 60, id: 3, frag: 0 }, udp_datagram(53, 5354, b"spoof"));
        let out = lab.from_uplink(&spoofed);
        assert_eq!((out.verdict, lab.counter(Counter::DropCtTupleTaken)), (DROP, 1));
        // The container's connection is untouched: its next query leaves masqueraded as before.
        let out = lab.from_container(&query);
        let expected = packet(ROUTER_MAC, UPLINK_MAC, Ip { src: UPLINK_IP, ttl: 63, ..from_container(CONTAINER_IP, UDP, 64) }, udp_datagram(nat_port, 53, b"query"));
        assert_eq!((out.verdict, out.packet), (REDIRECT, expected));
        // Another client's datagram to the published port is taken as ever.
        let other = packet(UPLINK_MAC, ROUTER_MAC, Ip { src: CLIENT_IP, dst: UPLINK_IP, proto: UDP, ttl: 60, id: 4, frag: 0 }, udp_datagram(53, 5354, b"hello"));
        assert_eq!(lab.from_uplink(&other).verdict, REDIRECT);
    });
}

#[test]
fn a_published_port_takes_outside_clients_to_the_container_with_their_own_address() {
    TestNetns::new("dnat").run(MASQ, |lab| {
        // 10.0.0.2 (on the test interface) publishes 8080 -> 80 on every address.
        lab.add_container(CONTAINER_IP, CONTAINER_MAC, TEST_IFINDEX, 1, GATEWAY_IP);
        lab.publish(None, 8080, TCP, CONTAINER_IP, 80);
        let client = Ip { src: CLIENT_IP, dst: UPLINK_IP, proto: TCP, ttl: 55, id: 9, frag: 0x4000 };
        let syn = packet(UPLINK_MAC, ROUTER_MAC, client, tcp_segment(5555, 8080, 0x02, b""));
        let out = lab.from_uplink(&syn);
        assert_eq!(out.verdict, REDIRECT, "delivered into the container");
        let expected = packet(
            CONTAINER_MAC,
            GATEWAY_MAC,
            Ip { dst: CONTAINER_IP, ttl: 54, ..Ip { src: CLIENT_IP, dst: UPLINK_IP, proto: TCP, ttl: 55, id: 9, frag: 0x4000 } },
            tcp_segment(5555, 80, 0x02, b""),
        );
        assert_eq!(out.packet, expected, "only the destination changes: the container sees the client");

        // The container's answer leaves from the address and port the client used.
        let answer = packet(GATEWAY_MAC, CONTAINER_MAC, Ip { src: CONTAINER_IP, dst: CLIENT_IP, proto: TCP, ttl: 64, id: 4, frag: 0x4000 }, tcp_segment(80, 5555, 0x12, b""));
        let out = lab.from_container(&answer);
        assert_eq!(out.verdict, REDIRECT);
        let expected = packet(ROUTER_MAC, UPLINK_MAC, Ip { src: UPLINK_IP, dst: CLIENT_IP, proto: TCP, ttl: 63, id: 4, frag: 0x4000 }, tcp_segment(8080, 5555, 0x12, b""));
        assert_eq!(out.packet, expected);

        // UDP is published separately; a port published on another address does not match.
        let dgram = packet(UPLINK_MAC, ROUTER_MAC, Ip { proto: UDP, ..client }, udp_datagram(5555, 8080, b"x"));
        assert_eq!(lab.from_uplink(&dgram).verdict, PASS, "8080/udp is not published");
        lab.publish(Some([192, 0, 2, 99]), 9090, TCP, CONTAINER_IP, 90);
        let other = packet(UPLINK_MAC, ROUTER_MAC, client, tcp_segment(5556, 9090, 0x02, b""));
        assert_eq!(lab.from_uplink(&other).verdict, PASS, "9090 is published on 192.0.2.99 only");
        // A port published on the uplink's own address matches it.
        lab.publish(Some(UPLINK_IP), 9091, UDP, CONTAINER_IP, 91);
        let out = lab.from_uplink(&packet(UPLINK_MAC, ROUTER_MAC, Ip { proto: UDP, ..client }, udp_datagram(5557, 9091, b"y")));
        assert_eq!(out.verdict, REDIRECT);
        let expected = packet(CONTAINER_MAC, GATEWAY_MAC, Ip { dst: CONTAINER_IP, ttl: 54, ..Ip { proto: UDP, ..client } }, udp_datagram(5557, 91, b"y"));
        assert_eq!(out.packet, expected);
    });
}

#[test]
fn containers_reach_published_ports_through_host_addresses() {
    TestNetns::new("hairpin").run(MASQ, |lab| {
        // 10.1.0.5 on another network publishes 8080 -> 80; the test container reaches it through
        // its own gateway's address.
        lab.add_container(PUBLISHER_IP, PUBLISHER_MAC, PUBLISHER_IFINDEX, 2, PUBLISHER_GATEWAY);
        lab.publish(None, 8080, TCP, PUBLISHER_IP, 80);
        lab.send_as(CONTAINER_IP, CONTAINER_MAC);
        let to_gateway = Ip { src: CONTAINER_IP, dst: GATEWAY_IP, proto: TCP, ttl: 64, id: 1, frag: 0x4000 };
        let syn = packet(GATEWAY_MAC, CONTAINER_MAC, to_gateway, tcp_segment(41000, 8080, 0x02, b""));
        let out = lab.from_container(&syn);
        assert_eq!(out.verdict, REDIRECT);
        let gw_port = port_at(&out.packet, L4);
        // A port of the NAT range, never the client's own: the gateway's address is the host's,
        // whose own connections take ports from the client's (ephemeral) range.
        assert!(NAT_PORTS.contains(&gw_port), "{gw_port}");
        // Into the publisher, from its own gateway (so that its answers come back through here).
        let expected = packet(
            PUBLISHER_MAC,
            GATEWAY_MAC,
            Ip { src: PUBLISHER_GATEWAY, dst: PUBLISHER_IP, ttl: 63, ..to_gateway },
            tcp_segment(gw_port, 80, 0x02, b""),
        );
        assert_eq!(out.packet, expected, "translated both ways, one hop (TTL) down");
        assert_eq!(lab.counter(Counter::Hairpin), 1);

        // The publisher answers its gateway; the answer reaches the client from the address and
        // port it connected to.
        lab.send_as(PUBLISHER_IP, PUBLISHER_MAC);
        let answer = packet(GATEWAY_MAC, PUBLISHER_MAC, Ip { src: PUBLISHER_IP, dst: PUBLISHER_GATEWAY, proto: TCP, ttl: 64, id: 2, frag: 0x4000 }, tcp_segment(80, gw_port, 0x12, b"hi"));
        let out = lab.from_container(&answer);
        assert_eq!(out.verdict, REDIRECT);
        let expected = packet(CONTAINER_MAC, GATEWAY_MAC, Ip { src: GATEWAY_IP, dst: CONTAINER_IP, proto: TCP, ttl: 63, id: 2, frag: 0x4000 }, tcp_segment(8080, 41000, 0x12, b"hi"));
        assert_eq!(out.packet, expected);
        // A packet whose TTL runs out on the host hop is dropped (counted): handed to the host,
        // its destination, it would be answered with a reset instead.
        let last_hop = packet(GATEWAY_MAC, PUBLISHER_MAC, Ip { src: PUBLISHER_IP, dst: PUBLISHER_GATEWAY, proto: TCP, ttl: 1, id: 3, frag: 0x4000 }, tcp_segment(80, gw_port, 0x10, b""));
        assert_eq!(lab.from_container(&last_hop).verdict, DROP);
        assert_eq!(lab.counter(Counter::DropTtlExpired), 1);

        // Through the uplink's address too (an address of the host: HOST_ADDRS says so).
        lab.send_as(CONTAINER_IP, CONTAINER_MAC);
        let to_uplink = Ip { dst: UPLINK_IP, ..to_gateway };
        let out = lab.from_container(&packet(GATEWAY_MAC, CONTAINER_MAC, to_uplink, tcp_segment(41001, 8080, 0x02, b"")));
        assert_eq!(out.verdict, REDIRECT);
        assert_eq!(&out.packet[0..6], &PUBLISHER_MAC);
        // A port nobody published, on the gateway: the host's.
        let p = packet(GATEWAY_MAC, CONTAINER_MAC, to_gateway, tcp_segment(41002, 22, 0x02, b""));
        let out = lab.from_container(&p);
        assert_eq!((out.verdict, out.packet), (PASS, p));
    });
}

/// Not a test: how long the programs take per packet on each path (`cargo test --release -p bpfnet
/// --test nat -- --ignored --nocapture`), for docs/BENCHMARKS.md. Each packet is run once per
/// call (a repeated run would see its own rewrites), 100,000 calls per path, after a first run
/// that created the connection.
#[test]
#[ignore]
fn program_time_per_packet() {
    TestNetns::new("timing").run(MASQ, |lab| {
        const N: u32 = 100_000;
        lab.add_container(PUBLISHER_IP, PUBLISHER_MAC, PUBLISHER_IFINDEX, 1, GATEWAY_IP);
        let c2c = packet(GATEWAY_MAC, CONTAINER_MAC, Ip { dst: PUBLISHER_IP, ..from_container(CONTAINER_IP, TCP, 64) }, tcp_segment(40000, 80, 0x10, b"x"));
        let out = packet(GATEWAY_MAC, CONTAINER_MAC, from_container(CONTAINER_IP, TCP, 64), tcp_segment(40000, 80, 0x10, b"x"));
        lab.from_container(&out);
        let reply = packet(UPLINK_MAC, ROUTER_MAC, Ip { src: SERVER_IP, dst: UPLINK_IP, proto: TCP, ttl: 50, id: 7, frag: 0 }, tcp_segment(80, 40000, 0x10, b"x"));
        let stray = packet(UPLINK_MAC, ROUTER_MAC, Ip { src: SERVER_IP, dst: UPLINK_IP, proto: TCP, ttl: 50, id: 7, frag: 0 }, tcp_segment(80, 1234, 0x10, b"x"));
        for (what, fd, p) in [
            ("container to container (same network)", lab.container, &c2c),
            ("masqueraded, existing connection, out", lab.container, &out),
            ("masqueraded, existing connection, reply in", lab.uplink, &reply),
            ("uplink packet for the host (no connection)", lab.uplink, &stray),
        ] {
            let total: u64 = (0..N).map(|_| time_tc(fd, p, 1).unwrap() as u64).sum();
            println!("{what:<45} {:>4} ns per packet", total / N as u64);
        }
    });
    // The same answer in XDP (an uplink whose driver runs XDP natively), into a container that
    // can take XDP's frames.
    TestNetns::new("timingxdp").run(MASQ | iface_flags::XDP_DELIVERY, |lab| {
        const N: u32 = 100_000;
        let out = packet(GATEWAY_MAC, CONTAINER_MAC, from_container(CONTAINER_IP, TCP, 64), tcp_segment(40000, 80, 0x10, b"x"));
        lab.from_container(&out);
        let reply = packet(UPLINK_MAC, ROUTER_MAC, Ip { src: SERVER_IP, dst: UPLINK_IP, proto: TCP, ttl: 50, id: 7, frag: 0 }, tcp_segment(80, 40000, 0x10, b"x"));
        assert_eq!(lab.from_uplink_xdp(&reply).verdict, XDP_REDIRECT, "the timed path is XDP's delivery");
        let total: u64 = (0..N).map(|_| time_tc(lab.uplink_xdp, &reply, 1).unwrap() as u64).sum();
        println!("{:<45} {:>4} ns per packet", "masqueraded, existing connection, reply in XDP", total / N as u64);
    });
    // A connection's first packet, each with a tuple of its own (1500 connections: 3000 of the
    // table's 4096 entries, so no eviction is timed).
    const NEW: u16 = 1500;
    TestNetns::new("timingsyn").run(MASQ, |lab| {
        let syn = packet(GATEWAY_MAC, CONTAINER_MAC, from_container(CONTAINER_IP, TCP, 64), tcp_segment(19999, 80, 0x02, b""));
        assert_eq!(lab.from_container(&syn).verdict, REDIRECT, "the timed path is the masquerade of a new connection");
        let total: u64 = (0..NEW)
            .map(|i| {
                let syn = packet(GATEWAY_MAC, CONTAINER_MAC, from_container(CONTAINER_IP, TCP, 64), tcp_segment(20000 + i, 80, 0x02, b""));
                time_tc(lab.container, &syn, 1).unwrap() as u64
            })
            .sum();
        println!("{:<45} {:>4} ns per packet", "masquerade, new connection (SYN) out", total / NEW as u64);
    });
    TestNetns::new("timingpub").run(MASQ, |lab| {
        lab.add_container(PUBLISHER_IP, PUBLISHER_MAC, PUBLISHER_IFINDEX, 1, GATEWAY_IP);
        lab.publish(None, 8080, TCP, PUBLISHER_IP, 80);
        let client = Ip { src: CLIENT_IP, dst: UPLINK_IP, proto: TCP, ttl: 55, id: 9, frag: 0x4000 };
        let syn = packet(UPLINK_MAC, ROUTER_MAC, client, tcp_segment(19999, 8080, 0x02, b""));
        assert_eq!(lab.from_uplink(&syn).verdict, REDIRECT, "the timed path is a new connection to the published port");
        let total: u64 = (0..NEW)
            .map(|i| {
                let syn = packet(UPLINK_MAC, ROUTER_MAC, client, tcp_segment(20000 + i, 8080, 0x02, b""));
                time_tc(lab.uplink, &syn, 1).unwrap() as u64
            })
            .sum();
        println!("{:<45} {:>4} ns per packet", "published port, new connection (SYN) in", total / NEW as u64);
    });
}

#[test]
fn a_reply_entry_evicted_under_pressure_is_put_back_or_its_connection_stopped() {
    TestNetns::new("evicted").run(MASQ, |lab| {
        let data = packet(GATEWAY_MAC, CONTAINER_MAC, from_container(CONTAINER_IP, TCP, 64), tcp_segment(40000, 80, 0x10, b"x"));
        let nat_port = port_at(&lab.from_container(&data).packet, L4);
        let reply_key = CtKey {
            saddr: IpKey::from_ipv4_octets(SERVER_IP),
            daddr: IpKey::from_ipv4_octets(UPLINK_IP),
            sport: 80u16.to_be(),
            dport: nat_port.to_be(),
            proto: TCP,
            _pad: [0; 3],
        };
        let reply_entry = lab.dp.conntrack_entry(&reply_key).unwrap().expect("the reply entry");
        // The LRU evicts the reply entry: the next packet puts it back, and answers still arrive.
        lab.dp.remove_conntrack_entry(&reply_key).unwrap();
        assert_eq!(lab.from_container(&data).verdict, REDIRECT);
        assert_eq!(lab.dp.conntrack_entry(&reply_key).unwrap().map(|e| e.peer), Some(reply_entry.peer));
        let answer = packet(UPLINK_MAC, ROUTER_MAC, Ip { src: SERVER_IP, dst: UPLINK_IP, proto: TCP, ttl: 50, id: 7, frag: 0 }, tcp_segment(80, nat_port, 0x10, b"y"));
        let out = lab.from_uplink(&answer);
        assert_eq!((out.verdict, &out.packet[0..6]), (REDIRECT, &CONTAINER_MAC[..]));
        // Evicted, then claimed by another container's connection: this one's packets stop.
        lab.dp.remove_conntrack_entry(&reply_key).unwrap();
        let mut other = reply_entry;
        other.peer.saddr = IpKey::from_ipv4_octets(OTHER_CONTAINER_IP);
        lab.dp.set_conntrack_entry(reply_key, other).unwrap();
        assert_eq!(lab.from_container(&data).verdict, DROP);
        assert_eq!(lab.counter(Counter::DropCtReplyLost), 1);
    });
}
