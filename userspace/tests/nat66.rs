//! NAT66 (IPv6 masquerade, as Docker's ip6tables rules): the real programs on hand-made IPv6
//! packets (BPF_PROG_TEST_RUN), every rewritten packet compared byte for byte with one built
//! here from scratch, the L4 checksums (pseudo-header included) computed here independently of
//! the kernel's incremental updates.
//!
//! The lab's namespace gives up0 2001:db8:2::1/64 too, with an IPv6 default route via
//! 2001:db8:2::fe (a permanent neighbour at the router's MAC). Needs root.
mod lab;

use bpfnet::datapath::UplinkAddresses;
use datapath_common::{iface_flags, Counter, EndpointInfo, IfaceInfo, IpKey, PortKey, PortTarget, GATEWAY_MAC};
use lab::*;

fn out6(next: u8, hop_limit: u8) -> Ip6 {
    Ip6::new(CONTAINER_IP6, SERVER_IP6, next, hop_limit)
}

fn reply6(next: u8, hop_limit: u8) -> Ip6 {
    Ip6::new(SERVER_IP6, UPLINK_IP6, next, hop_limit)
}

#[test]
fn tcp_over_ipv6_is_masqueraded_to_the_uplinks_ipv6_address_and_answers_come_back() {
    TestNetns::new("v6tcp").run(MASQ, |lab| {
        let syn = packet6(GATEWAY_MAC, CONTAINER_MAC, out6(TCP, 64), tcp_segment(40000, 80, 0x02, b""));
        let out = lab.from_container(&syn);
        assert_eq!(out.verdict, REDIRECT, "sent out of the uplink");
        assert_eq!(port_at(&out.packet, L4_6), 40000, "the container's port is kept where it is free");
        let expected = packet6(ROUTER_MAC, UPLINK_MAC, Ip6::new(UPLINK_IP6, SERVER_IP6, TCP, 63), tcp_segment(40000, 80, 0x02, b""));
        assert_eq!(out.packet, expected, "source address, hop limit, MACs and the TCP checksum exact");

        let data = packet6(GATEWAY_MAC, CONTAINER_MAC, out6(TCP, 64), tcp_segment(40000, 80, 0x18, b"GET / over IPv6"));
        let out = lab.from_container(&data);
        let expected = packet6(ROUTER_MAC, UPLINK_MAC, Ip6::new(UPLINK_IP6, SERVER_IP6, TCP, 63), tcp_segment(40000, 80, 0x18, b"GET / over IPv6"));
        assert_eq!(out.packet, expected, "the connection's next packet takes the same translation");

        // The server's answer to the uplink's address goes back into the container.
        let answer = packet6(UPLINK_MAC, ROUTER_MAC, reply6(TCP, 50), tcp_segment(80, 40000, 0x12, b"hello"));
        let out = lab.from_uplink(&answer);
        assert_eq!(out.verdict, REDIRECT, "delivered into the container");
        let expected = packet6(CONTAINER_MAC, GATEWAY_MAC, Ip6::new(SERVER_IP6, CONTAINER_IP6, TCP, 49), tcp_segment(80, 40000, 0x12, b"hello"));
        assert_eq!(out.packet, expected);
        assert_eq!(lab.counter(Counter::NatOut), 2);
        assert_eq!(lab.counter(Counter::NatIn), 1);

        // Another container with the same source port to the same server gets another port.
        lab.send_as(OTHER_CONTAINER_IP, OTHER_CONTAINER_MAC);
        let other = v6_of(OTHER_CONTAINER_IP);
        let syn = packet6(GATEWAY_MAC, OTHER_CONTAINER_MAC, Ip6::new(&other, SERVER_IP6, TCP, 64), tcp_segment(40000, 80, 0x02, b""));
        let out = lab.from_container(&syn);
        assert_eq!(out.verdict, REDIRECT);
        let other_port = port_at(&out.packet, L4_6);
        assert!(NAT_PORTS.contains(&other_port), "two connections never share a reply tuple: {other_port}");
        let answer = packet6(UPLINK_MAC, ROUTER_MAC, reply6(TCP, 50), tcp_segment(80, other_port, 0x12, b""));
        let out = lab.from_uplink(&answer);
        assert_eq!(out.verdict, REDIRECT);
        assert_eq!(&out.packet[0..6], &OTHER_CONTAINER_MAC, "the answer reaches the other container");
        assert_eq!(&out.packet[14 + 24..14 + 40], &v6(&other));

        // An answer nobody asked for is the host's; one addressed to a container is dropped.
        let endpoint = EndpointInfo { host_ifindex: 43, network_id: 1, mac: OTHER_CONTAINER_MAC, ..Default::default() };
        lab.dp.set_endpoint(other.parse().unwrap(), endpoint).unwrap();
        let stray = packet6(UPLINK_MAC, ROUTER_MAC, reply6(TCP, 50), tcp_segment(80, 1234, 0x12, b""));
        let out = lab.from_uplink(&stray);
        assert_eq!((out.verdict, out.packet), (PASS, stray));
        let direct = packet6(UPLINK_MAC, ROUTER_MAC, Ip6::new(SERVER_IP6, &other, TCP, 50), tcp_segment(80, 40000, 0x12, b""));
        assert_eq!(lab.from_uplink(&direct).verdict, DROP);
        assert_eq!(lab.counter(Counter::DropUplinkToContainer), 1);
    });
}

#[test]
fn udp_and_ping_over_ipv6_are_masqueraded_with_exact_checksums() {
    TestNetns::new("v6udp").run(MASQ, |lab| {
        let query = packet6(GATEWAY_MAC, CONTAINER_MAC, out6(UDP, 64), udp_datagram(5353, 53, b"query"));
        let out = lab.from_container(&query);
        assert_eq!(out.verdict, REDIRECT);
        let expected = packet6(ROUTER_MAC, UPLINK_MAC, Ip6::new(UPLINK_IP6, SERVER_IP6, UDP, 63), udp_datagram(5353, 53, b"query"));
        assert_eq!(out.packet, expected);
        let answer = packet6(UPLINK_MAC, ROUTER_MAC, reply6(UDP, 60), udp_datagram(53, 5353, b"answer"));
        let out = lab.from_uplink(&answer);
        assert_eq!(out.verdict, REDIRECT);
        let expected = packet6(CONTAINER_MAC, GATEWAY_MAC, Ip6::new(SERVER_IP6, CONTAINER_IP6, UDP, 59), udp_datagram(53, 5353, b"answer"));
        assert_eq!(out.packet, expected);

        // An echo request by its identifier; ICMPv6's checksum covers the addresses.
        let request = packet6(GATEWAY_MAC, CONTAINER_MAC, out6(ICMPV6, 64), icmp_echo(128, 0x4242, 1));
        let out = lab.from_container(&request);
        assert_eq!(out.verdict, REDIRECT);
        let expected = packet6(ROUTER_MAC, UPLINK_MAC, Ip6::new(UPLINK_IP6, SERVER_IP6, ICMPV6, 63), icmp_echo(128, 0x4242, 1));
        assert_eq!(out.packet, expected);
        let reply = packet6(UPLINK_MAC, ROUTER_MAC, reply6(ICMPV6, 60), icmp_echo(129, 0x4242, 1));
        let out = lab.from_uplink(&reply);
        assert_eq!(out.verdict, REDIRECT);
        let expected = packet6(CONTAINER_MAC, GATEWAY_MAC, Ip6::new(SERVER_IP6, CONTAINER_IP6, ICMPV6, 59), icmp_echo(129, 0x4242, 1));
        assert_eq!(out.packet, expected);

        // A second ping with the identifier another container holds: another identifier.
        lab.send_as(OTHER_CONTAINER_IP, OTHER_CONTAINER_MAC);
        let other = v6_of(OTHER_CONTAINER_IP);
        let request = packet6(GATEWAY_MAC, OTHER_CONTAINER_MAC, Ip6::new(&other, SERVER_IP6, ICMPV6, 64), icmp_echo(128, 0x4242, 1));
        let out = lab.from_container(&request);
        assert_eq!(out.verdict, REDIRECT);
        let id = port_at(&out.packet, L4_6 + 4);
        assert_ne!(id, 0x4242);
        let expected = packet6(ROUTER_MAC, UPLINK_MAC, Ip6::new(UPLINK_IP6, SERVER_IP6, ICMPV6, 63), icmp_echo(128, id, 1));
        assert_eq!(out.packet, expected);
        assert_eq!(lab.counter(Counter::NatOut), 3);
        assert_eq!(lab.counter(Counter::NatIn), 2);
    });
}

/// An IPv6 UDP datagram (`payload`, 8-byte aligned pieces) whose checksum is computed here over
/// the whole datagram, cut into two fragments of identification `id`: the UDP header and the
/// payload's first 24 bytes, then the rest (the fragment header's offset in 8-byte units).
fn udp_fragments(macs: ([u8; 6], [u8; 6]), ip: Ip6, ports: (u16, u16), payload: &[u8], id: u32) -> (Vec<u8>, Vec<u8>) {
    let whole = packet6(macs.0, macs.1, ip, udp_datagram(ports.0, ports.1, payload));
    let datagram = &whole[L4_6..];
    let fragment = |data: &[u8], offset: usize, more: bool| {
        let mut p = whole[..L4_6].to_vec();
        p[18..20].copy_from_slice(&((8 + data.len()) as u16).to_be_bytes());
        p[20] = 44; // a fragment header follows
        let offset_flags = (offset as u16) | more as u16;
        p.extend_from_slice(&[UDP, 0]);
        p.extend_from_slice(&offset_flags.to_be_bytes());
        p.extend_from_slice(&id.to_be_bytes());
        p.extend_from_slice(data);
        p
    };
    (fragment(&datagram[..32], 0, true), fragment(&datagram[32..], 32, false))
}

#[test]
fn fragmented_datagrams_are_masqueraded_fragment_by_fragment_both_ways() {
    TestNetns::new("v6frag").run(MASQ, |lab| {
        let question: Vec<u8> = (0..64u8).collect();
        let (first, later) = udp_fragments((GATEWAY_MAC, CONTAINER_MAC), out6(UDP, 64), (7000, 9000), &question, 0x4242);
        // The first fragment opens the connection (the container's port kept): its UDP checksum,
        // which covers the whole datagram, follows the new source address.
        let out = lab.from_container(&first);
        assert_eq!(out.verdict, REDIRECT, "sent out of the uplink");
        let out_ip = Ip6::new(UPLINK_IP6, SERVER_IP6, UDP, 63);
        let (expected_first, expected_later) = udp_fragments((ROUTER_MAC, UPLINK_MAC), out_ip, (7000, 9000), &question, 0x4242);
        assert_eq!(out.packet, expected_first, "the first fragment, translated with an exact checksum");
        // The later one (no UDP header) takes the first one's ports: its source only.
        let out = lab.from_container(&later);
        assert_eq!(out.verdict, REDIRECT);
        assert_eq!(out.packet, expected_later);

        // The answer comes back in fragments too, into the container.
        let answer: Vec<u8> = (100..164u8).collect();
        let back_ip = Ip6::new(SERVER_IP6, UPLINK_IP6, UDP, 50);
        let (first, later) = udp_fragments((UPLINK_MAC, ROUTER_MAC), back_ip, (9000, 7000), &answer, 0x77);
        let in_ip = Ip6::new(SERVER_IP6, CONTAINER_IP6, UDP, 49);
        let (expected_first, expected_later) = udp_fragments((CONTAINER_MAC, GATEWAY_MAC), in_ip, (9000, 7000), &answer, 0x77);
        let out = lab.from_uplink(&first);
        assert_eq!((out.verdict, out.packet), (REDIRECT, expected_first));
        let out = lab.from_uplink(&later);
        assert_eq!((out.verdict, out.packet), (REDIRECT, expected_later));
        assert_eq!(lab.counter(Counter::NatOut), 2);
        assert_eq!(lab.counter(Counter::NatIn), 2);

        // A later fragment whose first was not seen, or of another datagram, is the host's.
        let (_, stray) = udp_fragments((UPLINK_MAC, ROUTER_MAC), back_ip, (9000, 7000), &answer, 0x78);
        let out = lab.from_uplink(&stray);
        assert_eq!((out.verdict, out.packet), (PASS, stray));
        let (_, stray) = udp_fragments((GATEWAY_MAC, CONTAINER_MAC), out6(UDP, 64), (7000, 9000), &question, 0x4243);
        let out = lab.from_container(&stray);
        assert_eq!((out.verdict, out.packet), (PASS, stray));
        // A later fragment whose first was seen but not translated (its last hop: the host's)
        // opens no connection of its own.
        let (first, _) = udp_fragments((GATEWAY_MAC, CONTAINER_MAC), out6(UDP, 1), (7001, 9000), &question, 0x4244);
        assert_eq!(lab.from_container(&first).verdict, PASS);
        let later = udp_fragments((GATEWAY_MAC, CONTAINER_MAC), out6(UDP, 64), (7001, 9000), &question, 0x4244).1;
        let out = lab.from_container(&later);
        assert_eq!((out.verdict, out.packet), (PASS, later), "the host's, untranslated");
        assert_eq!(lab.counter(Counter::NatOut), 2);
    });
}

#[test]
fn what_ipv6_masquerade_leaves_to_the_host_or_drops() {
    let syn = || packet6(GATEWAY_MAC, CONTAINER_MAC, out6(TCP, 64), tcp_segment(40000, 80, 0x02, b""));
    TestNetns::new("v6nomasq").run(0, move |lab| {
        let out = lab.from_container(&syn());
        assert_eq!((out.verdict, out.packet), (PASS, syn()), "masquerade=false: untouched, to the host");
    });
    TestNetns::new("v6internal").run(iface_flags::INTERNAL, move |lab| {
        assert_eq!(lab.from_container(&syn()).verdict, DROP);
        assert_eq!(lab.counter(Counter::DropInternal), 1);
    });
    TestNetns::new("v6edge").run(MASQ, move |lab| {
        // The last hop: the host answers "time exceeded".
        let last = packet6(GATEWAY_MAC, CONTAINER_MAC, out6(UDP, 1), udp_datagram(33434, 33434, b"traceroute"));
        let out = lab.from_container(&last);
        assert_eq!((out.verdict, out.packet), (PASS, last));
        // ICMPv6 other than echo (an error the container sends) is the host's.
        let unreachable = packet6(GATEWAY_MAC, CONTAINER_MAC, out6(ICMPV6, 64), vec![1, 4, 0, 0, 0, 0, 0, 0]);
        assert_eq!(lab.from_container(&unreachable).verdict, PASS);
        assert_eq!(lab.counter(Counter::NatOut), 0);

        // An uplink without an IPv6 address masquerades no IPv6.
        let uplink = UplinkAddresses { ifindex: lab.uplink_index, ipv4: UPLINK_IP.into(), ipv6: None, veth: false };
        lab.dp.set_uplinks(&[uplink]).unwrap();
        let out = lab.from_container(&syn());
        assert_eq!((out.verdict, out.packet), (PASS, syn()));
        assert_eq!(lab.counter(Counter::NatOut), 0);
    });
    let ns = TestNetns::new("v6mtu");
    ip(&["-n", &ns.name, "link", "set", "up0", "mtu", "1280"]);
    ns.run(MASQ, |lab| {
        let big = packet6(GATEWAY_MAC, CONTAINER_MAC, out6(UDP, 64), udp_datagram(5001, 53, &[7u8; 1300]));
        let out = lab.from_container(&big);
        assert_eq!((out.verdict, out.packet), (PASS, big), "untranslated, too big for the uplink");
        let small = packet6(GATEWAY_MAC, CONTAINER_MAC, out6(UDP, 64), udp_datagram(5001, 53, &[7u8; 1000]));
        assert_eq!(lab.from_container(&small).verdict, REDIRECT);
    });
}

/// An ICMPv6 error of `kind` (with `info`: the MTU of "packet too big") from the router,
/// quoting `quoted` (a whole frame; its Ethernet header is left out), sent to `to`.
fn icmpv6_error(kind: u8, info: u32, quoted: &[u8], to: &str, hop_limit: u8) -> Ip6AndSegment {
    let mut icmp = vec![kind, 0, 0, 0];
    icmp.extend_from_slice(&info.to_be_bytes());
    icmp.extend_from_slice(&quoted[14..]);
    (Ip6::new(ROUTER_IP6, to, ICMPV6, hop_limit), icmp)
}

type Ip6AndSegment = (Ip6, Vec<u8>);

#[test]
fn icmpv6_errors_about_masqueraded_connections_reach_the_container_translated() {
    TestNetns::new("v6icmperr").run(MASQ, |lab| {
        // "Packet too big" about a full-size TCP segment: what the container sent, as it left.
        let sent = packet6(GATEWAY_MAC, CONTAINER_MAC, out6(TCP, 64), tcp_segment(40000, 443, 0x18, &[5u8; 1400]));
        let left = lab.from_container(&sent);
        assert_eq!(left.verdict, REDIRECT);
        let (ip, icmp) = icmpv6_error(2, 1280, &left.packet, UPLINK_IP6, 64);
        let error = packet6(UPLINK_MAC, ROUTER_MAC, ip, icmp);
        let out = lab.from_uplink(&error);
        assert_eq!(out.verdict, REDIRECT, "delivered into the container");
        // The quote as the container sent it but for the hop it took.
        let as_sent = packet6(GATEWAY_MAC, CONTAINER_MAC, out6(TCP, 63), tcp_segment(40000, 443, 0x18, &[5u8; 1400]));
        let (ip, icmp) = icmpv6_error(2, 1280, &as_sent, CONTAINER_IP6, 63);
        assert_eq!(out.packet, packet6(CONTAINER_MAC, GATEWAY_MAC, ip, icmp), "every checksum exact");
        assert_eq!(lab.counter(Counter::NatIcmpError), 1);

        // "Time exceeded" about a ping whose identifier was translated (another container holds
        // the first one's).
        let first = packet6(GATEWAY_MAC, CONTAINER_MAC, out6(ICMPV6, 64), icmp_echo(128, 0x4242, 1));
        assert_eq!(lab.from_container(&first).verdict, REDIRECT);
        lab.send_as(OTHER_CONTAINER_IP, OTHER_CONTAINER_MAC);
        let other = v6_of(OTHER_CONTAINER_IP);
        let ping = packet6(GATEWAY_MAC, OTHER_CONTAINER_MAC, Ip6::new(&other, SERVER_IP6, ICMPV6, 64), icmp_echo(128, 0x4242, 1));
        let left = lab.from_container(&ping);
        assert_ne!(port_at(&left.packet, L4_6 + 4), 0x4242);
        let (ip, icmp) = icmpv6_error(3, 0, &left.packet, UPLINK_IP6, 64);
        let out = lab.from_uplink(&packet6(UPLINK_MAC, ROUTER_MAC, ip, icmp));
        assert_eq!(out.verdict, REDIRECT);
        let as_sent = packet6(GATEWAY_MAC, OTHER_CONTAINER_MAC, Ip6::new(&other, SERVER_IP6, ICMPV6, 63), icmp_echo(128, 0x4242, 1));
        let (ip, icmp) = icmpv6_error(3, 0, &as_sent, &other, 63);
        assert_eq!(out.packet, packet6(OTHER_CONTAINER_MAC, GATEWAY_MAC, ip, icmp), "the identifier and its checksums back");

        // About no tracked connection (a forged quote): the host's, untouched.
        let forged_quote = packet6(ROUTER_MAC, UPLINK_MAC, Ip6::new(UPLINK_IP6, SERVER_IP6, TCP, 63), tcp_segment(40999, 443, 0x18, b""));
        let (ip, icmp) = icmpv6_error(1, 0, &forged_quote, UPLINK_IP6, 64);
        let forged = packet6(UPLINK_MAC, ROUTER_MAC, ip, icmp);
        let out = lab.from_uplink(&forged);
        assert_eq!((out.verdict, out.packet), (PASS, forged));
        assert_eq!(lab.counter(Counter::NatIcmpError), 2);
    });
}

const CLIENT_IP6: &str = "2001:db8:7::9";

/// Publishes `host_port` (on every IPv6 address, or on `on`) to the container's IPv6 address,
/// port 80; the container behind the test interface.
fn publish6(lab: &mut Lab, on: Option<&str>, host_port: u16, proto: u8) {
    let key = match on {
        Some(ip) => PortKey { addr: IpKey::from(ip.parse::<std::net::IpAddr>().unwrap()), port: host_port.to_be(), proto, _pad: 0 },
        None => PortKey::any_ipv6_address(host_port.to_be(), proto),
    };
    let target = PortTarget { addr: IpKey::from(CONTAINER_IP6.parse::<std::net::IpAddr>().unwrap()), port: 80u16.to_be(), ..Default::default() };
    lab.dp.set_port(key, target).unwrap();
    let endpoint = EndpointInfo { host_ifindex: TEST_IFINDEX, network_id: 1, mac: CONTAINER_MAC, ..Default::default() };
    lab.dp.set_endpoint(CONTAINER_IP6.parse().unwrap(), endpoint).unwrap();
}

#[test]
fn a_port_published_on_ipv6_takes_outside_clients_to_the_container_with_their_own_address() {
    TestNetns::new("v6pub").run(MASQ, |lab| {
        publish6(lab, None, 8000, TCP);
        publish6(lab, Some(UPLINK_IP6), 8001, UDP);
        // An IPv4-only publication takes no IPv6 client.
        lab.publish(None, 8002, TCP, CONTAINER_IP, 80);

        let syn = packet6(UPLINK_MAC, ROUTER_MAC, Ip6::new(CLIENT_IP6, UPLINK_IP6, TCP, 50), tcp_segment(50000, 8000, 0x02, b""));
        let out = lab.from_uplink(&syn);
        assert_eq!(out.verdict, REDIRECT, "into the container");
        let expected = packet6(CONTAINER_MAC, GATEWAY_MAC, Ip6::new(CLIENT_IP6, CONTAINER_IP6, TCP, 49), tcp_segment(50000, 80, 0x02, b""));
        assert_eq!(out.packet, expected, "the client's own address kept, the port translated, checksum exact");

        // The container's answer leaves from the address and port the client used.
        let answer = packet6(GATEWAY_MAC, CONTAINER_MAC, Ip6::new(CONTAINER_IP6, CLIENT_IP6, TCP, 64), tcp_segment(80, 50000, 0x12, b""));
        let out = lab.from_container(&answer);
        assert_eq!(out.verdict, REDIRECT);
        let expected = packet6(ROUTER_MAC, UPLINK_MAC, Ip6::new(UPLINK_IP6, CLIENT_IP6, TCP, 63), tcp_segment(8000, 50000, 0x12, b""));
        assert_eq!(out.packet, expected);

        // UDP on the one address it is published on.
        let query = packet6(UPLINK_MAC, ROUTER_MAC, Ip6::new(CLIENT_IP6, UPLINK_IP6, UDP, 50), udp_datagram(5000, 8001, b"ask"));
        let out = lab.from_uplink(&query);
        assert_eq!(out.verdict, REDIRECT);
        let expected = packet6(CONTAINER_MAC, GATEWAY_MAC, Ip6::new(CLIENT_IP6, CONTAINER_IP6, UDP, 49), udp_datagram(5000, 80, b"ask"));
        assert_eq!(out.packet, expected);
        assert_eq!(lab.counter(Counter::NatIn), 2);

        // Not published on IPv6, or not a new connection: the host's.
        for stray in [
            packet6(UPLINK_MAC, ROUTER_MAC, Ip6::new(CLIENT_IP6, UPLINK_IP6, TCP, 50), tcp_segment(50001, 8002, 0x02, b"")),
            packet6(UPLINK_MAC, ROUTER_MAC, Ip6::new(CLIENT_IP6, UPLINK_IP6, TCP, 50), tcp_segment(50002, 8000, 0x10, b"")),
            packet6(UPLINK_MAC, ROUTER_MAC, Ip6::new(CLIENT_IP6, "2001:db8:2::99", TCP, 50), tcp_segment(50003, 8000, 0x02, b"")),
        ] {
            let out = lab.from_uplink(&stray);
            assert_eq!((out.verdict, out.packet), (PASS, stray));
        }
        assert_eq!(lab.counter(Counter::NatIn), 2);

        // Spoofed or martian sources from the LAN open no connection: a container's address, the
        // host's own, an IPv4-mapped one (which would name IPv4's entries); nor does an
        // IPv4-mapped destination reach IPv4's publications.
        for (src, dst, port, reason) in [
            (CONTAINER_IP6, UPLINK_IP6, 8000, Counter::DropUplinkSpoofed),
            (UPLINK_IP6, UPLINK_IP6, 8000, Counter::DropUplinkSpoofed),
            ("::ffff:203.0.113.9", UPLINK_IP6, 8000, Counter::DropMartian),
            (CLIENT_IP6, "::ffff:192.0.2.1", 8002, Counter::DropMartian),
        ] {
            let before = lab.counter(reason);
            let forged = packet6(UPLINK_MAC, ROUTER_MAC, Ip6::new(src, dst, TCP, 50), tcp_segment(50005, port, 0x02, b""));
            assert_eq!(lab.from_uplink(&forged).verdict, DROP, "{src} -> {dst}");
            assert_eq!(lab.counter(reason), before + 1, "{src} -> {dst}");
        }
        assert_eq!(lab.counter(Counter::NatIn), 2);

        // A host listener on the port keeps it (no publication flag says otherwise).
        let _listener = std::net::TcpListener::bind("[::]:8003").unwrap();
        publish6(lab, None, 8003, TCP);
        let syn = packet6(UPLINK_MAC, ROUTER_MAC, Ip6::new(CLIENT_IP6, UPLINK_IP6, TCP, 50), tcp_segment(50004, 8003, 0x02, b""));
        assert_eq!(lab.from_uplink(&syn).verdict, PASS);
    });
}

#[test]
fn containers_reach_ports_published_on_ipv6_through_host_addresses() {
    const PUBLISHER6: &str = "fd00:2::5";
    const PUBLISHER_GATEWAY6: &str = "fd00:2::1";
    TestNetns::new("v6hairpin").run(MASQ, |lab| {
        let words = |text: &str| IpKey::from(text.parse::<std::net::IpAddr>().unwrap()).addr;
        let publisher_iface = IfaceInfo {
            network_id: 2,
            ipv4: PUBLISHER_IP,
            gateway_ipv4: PUBLISHER_GATEWAY,
            flags: MASQ,
            mac: PUBLISHER_MAC,
            ipv6: words(PUBLISHER6),
            gateway_ipv6: words(PUBLISHER_GATEWAY6),
            ..Default::default()
        };
        lab.dp.set_iface(PUBLISHER_IFINDEX, publisher_iface).unwrap();
        let endpoint = EndpointInfo { host_ifindex: PUBLISHER_IFINDEX, network_id: 2, mac: PUBLISHER_MAC, ..Default::default() };
        lab.dp.set_endpoint(PUBLISHER6.parse().unwrap(), endpoint).unwrap();
        let target = PortTarget { addr: IpKey::from(PUBLISHER6.parse::<std::net::IpAddr>().unwrap()), port: 80u16.to_be(), ..Default::default() };
        lab.dp.set_port(PortKey::any_ipv6_address(8000u16.to_be(), TCP), target).unwrap();

        // The container on network 1 asks the uplink's IPv6 address: to the publisher, from its
        // network's IPv6 gateway, one hop.
        let syn = packet6(GATEWAY_MAC, CONTAINER_MAC, Ip6::new(CONTAINER_IP6, UPLINK_IP6, TCP, 64), tcp_segment(40000, 8000, 0x02, b""));
        let out = lab.from_container(&syn);
        assert_eq!(out.verdict, REDIRECT);
        // At a port of the NAT range (the gateway's address is the host's).
        let gw_port = port_at(&out.packet, L4_6);
        assert!(NAT_PORTS.contains(&gw_port), "{gw_port}");
        let expected = packet6(PUBLISHER_MAC, GATEWAY_MAC, Ip6::new(PUBLISHER_GATEWAY6, PUBLISHER6, TCP, 63), tcp_segment(gw_port, 80, 0x02, b""));
        assert_eq!(out.packet, expected);
        // Through its own network's IPv6 gateway too, for the same port on every address.
        let syn = packet6(GATEWAY_MAC, CONTAINER_MAC, Ip6::new(CONTAINER_IP6, GATEWAY_IP6, TCP, 64), tcp_segment(40001, 8000, 0x02, b""));
        let out = lab.from_container(&syn);
        assert_eq!(out.verdict, REDIRECT);
        assert_eq!(&out.packet[14 + 24..14 + 40], &v6(PUBLISHER6));

        // The publisher's answer to its gateway goes back to the container, from the address and
        // port it asked.
        lab.dp.set_iface(TEST_IFINDEX, publisher_iface).unwrap();
        let answer = packet6(GATEWAY_MAC, PUBLISHER_MAC, Ip6::new(PUBLISHER6, PUBLISHER_GATEWAY6, TCP, 64), tcp_segment(80, gw_port, 0x12, b""));
        let out = lab.from_container(&answer);
        assert_eq!(out.verdict, REDIRECT);
        let expected = packet6(CONTAINER_MAC, GATEWAY_MAC, Ip6::new(UPLINK_IP6, CONTAINER_IP6, TCP, 63), tcp_segment(8000, 40000, 0x12, b""));
        assert_eq!(out.packet, expected);
        assert_eq!(lab.counter(Counter::Hairpin), 3);

        // An ICMPv6 error from outside quoting the hairpin connection's tuple is not delivered.
        let quoted = packet6(ROUTER_MAC, UPLINK_MAC, Ip6::new(PUBLISHER_GATEWAY6, PUBLISHER6, TCP, 63), tcp_segment(gw_port, 80, 0x10, b""));
        let (ip, icmp) = icmpv6_error(1, 0, &quoted, UPLINK_IP6, 64);
        let error = packet6(UPLINK_MAC, ROUTER_MAC, ip, icmp);
        let out = lab.from_uplink(&error);
        assert_eq!((out.verdict, out.packet), (PASS, error), "a hairpin connection is no outside one");
    });
    TestNetns::new("v6hairpinint").run(iface_flags::INTERNAL, |lab| {
        publish6(lab, None, 8000, TCP);
        let syn = packet6(GATEWAY_MAC, CONTAINER_MAC, Ip6::new(CONTAINER_IP6, GATEWAY_IP6, TCP, 64), tcp_segment(40000, 8000, 0x02, b""));
        assert_eq!(lab.from_container(&syn).verdict, DROP, "an internal network reaches no published port");
        assert_eq!(lab.counter(Counter::DropInternal), 1);
    });
}

#[test]
fn icmpv6_errors_a_container_sends_about_translated_packets_leave_translated() {
    TestNetns::new("v6icmpout").run(MASQ, |lab| {
        // The other container's query takes another port: the first holds 5353 to the server.
        let first = packet6(GATEWAY_MAC, CONTAINER_MAC, out6(UDP, 64), udp_datagram(5353, 53, b"query"));
        assert_eq!(lab.from_container(&first).verdict, REDIRECT);
        lab.send_as(OTHER_CONTAINER_IP, OTHER_CONTAINER_MAC);
        let other = v6_of(OTHER_CONTAINER_IP);
        let query = packet6(GATEWAY_MAC, OTHER_CONTAINER_MAC, Ip6::new(&other, SERVER_IP6, UDP, 64), udp_datagram(5353, 53, b"query"));
        let left = lab.from_container(&query);
        let port = port_at(&left.packet, L4_6);
        assert_ne!(port, 5353);
        // The answer comes in; the container's socket is gone: "port unreachable", quoting the
        // answer as it arrived.
        let answer = packet6(UPLINK_MAC, ROUTER_MAC, reply6(UDP, 60), udp_datagram(53, port, b"answer"));
        let delivered = lab.from_uplink(&answer);
        assert_eq!(delivered.verdict, REDIRECT);
        let mut unreachable = vec![1, 4, 0, 0, 0, 0, 0, 0];
        unreachable.extend_from_slice(&delivered.packet[14..]);
        let error = packet6(GATEWAY_MAC, OTHER_CONTAINER_MAC, Ip6::new(&other, SERVER_IP6, ICMPV6, 64), unreachable);
        let out = lab.from_container(&error);
        assert_eq!(out.verdict, REDIRECT, "out of the uplink");
        // From the uplink's address, quoting what the server sent (but for the hop it took).
        let mut expected_icmp = vec![1, 4, 0, 0, 0, 0, 0, 0];
        expected_icmp.extend_from_slice(&packet6(UPLINK_MAC, ROUTER_MAC, reply6(UDP, 59), udp_datagram(53, port, b"answer"))[14..]);
        let expected = packet6(ROUTER_MAC, UPLINK_MAC, Ip6::new(UPLINK_IP6, SERVER_IP6, ICMPV6, 63), expected_icmp);
        assert_eq!(out.packet, expected, "every checksum exact");
        assert_eq!(lab.counter(Counter::NatIcmpError), 1);

        // About another container's connection, or to someone else: the host's, untouched.
        lab.send_as(CONTAINER_IP, CONTAINER_MAC);
        let mut forged = vec![1, 4, 0, 0, 0, 0, 0, 0];
        forged.extend_from_slice(&delivered.packet[14..]);
        let forged = packet6(GATEWAY_MAC, CONTAINER_MAC, out6(ICMPV6, 64), forged);
        let out = lab.from_container(&forged);
        assert_eq!((out.verdict, out.packet), (PASS, forged), "not its own connection");
        lab.send_as(OTHER_CONTAINER_IP, OTHER_CONTAINER_MAC);
        let mut elsewhere = vec![1, 4, 0, 0, 0, 0, 0, 0];
        elsewhere.extend_from_slice(&delivered.packet[14..]);
        let elsewhere = packet6(GATEWAY_MAC, OTHER_CONTAINER_MAC, Ip6::new(&other, CLIENT_IP6, ICMPV6, 64), elsewhere);
        let out = lab.from_container(&elsewhere);
        assert_eq!((out.verdict, out.packet), (PASS, elsewhere), "only to whoever sent the quoted packet");
        assert_eq!(lab.counter(Counter::NatIcmpError), 1);
    });
}
