//! IPv6 in `from_container`, run with BPF_PROG_TEST_RUN on hand-made frames: neighbour
//! solicitations answered byte for byte (checksums computed here, independently), forwarding to
//! a container of the same network, and every drop with its counter (spoofed sources,
//! isolation, `icc=false`, `--internal`, multicast). The packet's device in a test run is
//! loopback (ifindex 1): the sender's interface entry is written under ifindex 1. Needs root.
use std::net::{IpAddr, Ipv6Addr};

use bpfnet::{
    datapath::{Datapath, LoadOptions},
    test_run::run_tc,
};
use datapath_common::{iface_flags, Counter, EndpointInfo, IfaceInfo, IpKey, GATEWAY_MAC};

const PASS: u32 = 0; // TC_ACT_OK: to the host stack
const DROP: u32 = 2; // TC_ACT_SHOT
const REDIRECT: u32 = 7; // TC_ACT_REDIRECT
const TEST_IFINDEX: u32 = 1;

const SENDER_MAC: [u8; 6] = [0x02, 0x42, 10, 0, 0, 2];
const SENDER: &str = "fd00:1::2";
/// The sender's link-local address: modified EUI-64 of its MAC.
const SENDER_LINK_LOCAL: &str = "fe80::42:aff:fe00:2";
const GATEWAY: &str = "fd00:1::1";
const PEER: &str = "fd00:1::3"; // same network
const PEER_MAC: [u8; 6] = [0x02, 0x42, 10, 0, 0, 3];
const PEER_HOST_IFINDEX: u32 = 42;
const OTHER_NET: &str = "fd00:2::2"; // another network
const ICMPV6: u8 = 58;
const TCP: u8 = 6;

fn v6(text: &str) -> [u8; 16] {
    text.parse::<Ipv6Addr>().unwrap().octets()
}

fn words(text: &str) -> [u32; 4] {
    IpKey::from(IpAddr::V6(text.parse().unwrap())).addr
}

/// The sender on network 1 (ifindex 1, dual stack), a peer on network 1, one on network 2.
fn datapath(flags: u32) -> Datapath {
    let options = LoadOptions { ct_entries: 4096, ..Default::default() };
    let mut dp = Datapath::load_unpinned(&options).expect("loading the datapath (run as root)");
    let iface = IfaceInfo {
        network_id: 1,
        ipv4: [10, 0, 0, 2],
        gateway_ipv4: [10, 0, 0, 1],
        flags,
        mac: SENDER_MAC,
        ipv6: words(SENDER),
        gateway_ipv6: words(GATEWAY),
        ..Default::default()
    };
    dp.set_iface(TEST_IFINDEX, iface).unwrap();
    let peer = EndpointInfo { host_ifindex: PEER_HOST_IFINDEX, network_id: 1, mac: PEER_MAC, ..Default::default() };
    dp.set_endpoint(PEER.parse().unwrap(), peer).unwrap();
    let other = EndpointInfo { host_ifindex: 43, network_id: 2, mac: [0x02, 0x42, 10, 1, 0, 2], ..Default::default() };
    dp.set_endpoint(OTHER_NET.parse().unwrap(), other).unwrap();
    // The peer's IPv4 address (an IPv4-mapped key): never reached through IPv6.
    dp.set_endpoint("10.0.0.3".parse().unwrap(), peer).unwrap();
    dp
}

fn counter(dp: &mut Datapath, which: Counter) -> u64 {
    dp.counters().unwrap().into_iter().find(|(c, _)| *c == which).unwrap().1
}

/// RFC 1071 over `bytes` (an odd length padded with a zero).
fn internet_checksum(bytes: &[u8]) -> u16 {
    let mut sum: u32 = bytes.chunks(2).map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]))).sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// Ethernet + IPv6 (`hop_limit`, `next`) + `payload`, from `src` to `dst`; an ICMPv6 payload
/// gets its checksum (bytes 2-3) filled in.
fn frame(dst_mac: [u8; 6], src: &str, dst: &str, next: u8, hop_limit: u8, payload: &[u8]) -> Vec<u8> {
    let mut payload = payload.to_vec();
    if next == ICMPV6 {
        let mut pseudo = Vec::new();
        pseudo.extend_from_slice(&v6(src));
        pseudo.extend_from_slice(&v6(dst));
        pseudo.extend_from_slice(&(payload.len() as u32).to_be_bytes());
        pseudo.extend_from_slice(&[0, 0, 0, ICMPV6]);
        payload[2..4].fill(0);
        pseudo.extend_from_slice(&payload);
        payload[2..4].copy_from_slice(&internet_checksum(&pseudo).to_be_bytes());
    }
    let mut p = Vec::new();
    p.extend_from_slice(&dst_mac);
    p.extend_from_slice(&SENDER_MAC);
    p.extend_from_slice(&[0x86, 0xdd]);
    p.extend_from_slice(&[0x60, 0, 0, 0]);
    p.extend_from_slice(&(payload.len() as u16).to_be_bytes());
    p.extend_from_slice(&[next, hop_limit]);
    p.extend_from_slice(&v6(src));
    p.extend_from_slice(&v6(dst));
    p.extend_from_slice(&payload);
    p
}

/// A neighbour solicitation for `target`, with the sender's link-layer address option or not.
fn solicitation(src: &str, target: &str, with_option: bool, hop_limit: u8) -> Vec<u8> {
    let t = v6(target);
    let solicited_node = format!("ff02::1:ff{:02x}:{:02x}{:02x}", t[13], t[14], t[15]);
    let mut icmp = vec![135, 0, 0, 0, 0, 0, 0, 0];
    icmp.extend_from_slice(&t);
    if with_option {
        icmp.extend_from_slice(&[1, 1]);
        icmp.extend_from_slice(&SENDER_MAC);
    }
    let dst_mac = [0x33, 0x33, 0xff, t[13], t[14], t[15]];
    frame(dst_mac, src, &solicited_node, ICMPV6, hop_limit, &icmp)
}

/// The advertisement a correct responder sends to `asker` for `target` at `mac`, `flags` set.
fn advertisement(asker: &str, target: &str, mac: [u8; 6], flags: u8) -> Vec<u8> {
    let mut icmp = vec![136, 0, 0, 0, flags, 0, 0, 0];
    icmp.extend_from_slice(&v6(target));
    icmp.extend_from_slice(&[2, 1]);
    icmp.extend_from_slice(&mac);
    let mut p = frame(SENDER_MAC, target, asker, ICMPV6, 255, &icmp);
    p[6..12].copy_from_slice(&mac);
    p
}

/// Ethernet + IPv6 + a TCP segment with a payload (checksum not checked by the datapath).
fn tcp(dst_mac: [u8; 6], src: &str, dst: &str) -> Vec<u8> {
    let mut segment = vec![0x9c, 0x40, 0x1f, 0x90, 0, 0, 0, 1, 0, 0, 0, 0, 0x50, 0x18, 0xff, 0xff, 0x12, 0x34, 0, 0];
    segment.extend_from_slice(b"hello bpfnet over IPv6");
    frame(dst_mac, src, dst, TCP, 64, &segment)
}

const ROUTER: u8 = 0x80;
const SOLICITED: u8 = 0x40;
const OVERRIDE: u8 = 0x20;

#[test]
fn a_solicitation_for_the_gateway_gets_an_exact_advertisement() {
    let mut dp = datapath(0);
    let fd = dp.program_fd().unwrap();
    let out = run_tc(fd, &solicitation(SENDER, GATEWAY, true, 255)).unwrap();
    assert_eq!(out.verdict, REDIRECT, "sent back out of the same interface");
    assert_eq!(out.packet, advertisement(SENDER, GATEWAY, GATEWAY_MAC, ROUTER | SOLICITED | OVERRIDE));
    assert_eq!(counter(&mut dp, Counter::NdpReplied), 1);
}

#[test]
fn solicitations_for_containers_are_answered_from_any_length_and_the_link_local_source() {
    let mut dp = datapath(0);
    let fd = dp.program_fd().unwrap();
    // From the link-local address (the kernel's probes), with no option (grown to the reply).
    for with_option in [true, false] {
        let out = run_tc(fd, &solicitation(SENDER_LINK_LOCAL, PEER, with_option, 255)).unwrap();
        assert_eq!(out.verdict, REDIRECT);
        assert_eq!(out.packet, advertisement(SENDER_LINK_LOCAL, PEER, PEER_MAC, SOLICITED | OVERRIDE), "option: {with_option}");
    }
    assert_eq!(counter(&mut dp, Counter::NdpReplied), 2);
}

#[test]
fn solicitations_that_must_not_be_answered_are_dropped_and_counted() {
    let mut dp = datapath(0);
    let fd = dp.program_fd().unwrap();
    for (packet, reason) in [
        (solicitation(SENDER, OTHER_NET, true, 255), Counter::DropNdpUnknownTarget),
        (solicitation(SENDER, "fd00:1::77", true, 255), Counter::DropNdpUnknownTarget),
        // Routed from elsewhere (RFC 4861: only 255 comes from the link).
        (solicitation(SENDER, GATEWAY, true, 64), Counter::DropMalformed),
        // Another container's addresses as source.
        (solicitation(PEER, GATEWAY, true, 255), Counter::DropSpoofedSource),
        (solicitation("fe80::42:aff:fe00:3", GATEWAY, true, 255), Counter::DropSpoofedSource),
        // Duplicate address detection (from ::): nothing answers, so the address is unique.
        (solicitation("::", GATEWAY, true, 255), Counter::DropIpv6Multicast),
        // An IPv4 endpoint's key (IPv4-mapped) is no IPv6 neighbour.
        (solicitation(SENDER, "::ffff:10.0.0.3", true, 255), Counter::DropNdpUnknownTarget),
        // Behind an extension header: not answered, and not let through either (multicast).
        (behind_destination_options(solicitation(SENDER, GATEWAY, true, 255)), Counter::DropIpv6Multicast),
    ] {
        let before = counter(&mut dp, reason);
        assert_eq!(run_tc(fd, &packet).unwrap().verdict, DROP, "{reason:?}");
        assert_eq!(counter(&mut dp, reason), before + 1, "{reason:?}");
    }
    assert_eq!(counter(&mut dp, Counter::NdpReplied), 0);
}

#[test]
fn a_solicitation_with_more_options_gets_the_same_exact_advertisement() {
    let mut dp = datapath(0);
    let fd = dp.program_fd().unwrap();
    // A nonce option (RFC 3971 5.3.2) after the link-layer address: the reply is shorter.
    let mut ns = solicitation(SENDER, PEER, true, 255);
    ns.extend_from_slice(&[14, 1, 1, 2, 3, 4, 5, 6]);
    let len = (ns.len() - 54) as u16;
    ns[18..20].copy_from_slice(&len.to_be_bytes());
    let out = run_tc(fd, &ns).unwrap();
    assert_eq!(out.verdict, REDIRECT);
    assert_eq!(out.packet, advertisement(SENDER, PEER, PEER_MAC, SOLICITED | OVERRIDE));
}

/// `packet` (Ethernet + IPv6 + its upper layer) with a Destination Options header (PadN only)
/// put in front of the upper layer.
fn behind_destination_options(mut packet: Vec<u8>) -> Vec<u8> {
    let upper = packet[20];
    packet[20] = 60;
    let len = u16::from_be_bytes([packet[18], packet[19]]) + 8;
    packet[18..20].copy_from_slice(&len.to_be_bytes());
    packet.splice(54..54, [upper, 0, 1, 4, 0, 0, 0, 0]);
    packet
}

/// An ICMPv6 message of `icmp_type` from the sender to `dst` (unicast, hop limit 255), with a
/// target (the gateway) and a target link-layer address option (a forged MAC).
fn link_control(icmp_type: u8, dst: &str) -> Vec<u8> {
    let mut icmp = vec![icmp_type, 0, 0, 0, 0x60, 0, 0, 0];
    icmp.extend_from_slice(&v6(GATEWAY));
    icmp.extend_from_slice(&[2, 1, 0x02, 0xba, 0xd0, 0xba, 0xd0, 0x01]);
    frame(PEER_MAC, SENDER, dst, ICMPV6, 255, &icmp)
}

#[test]
fn containers_cannot_speak_for_the_link() {
    let mut dp = datapath(0);
    let fd = dp.program_fd().unwrap();
    // An advertisement to a neighbour that the gateway is at a forged MAC (which would cut it
    // off from its gateway), plain or behind an extension header; a redirect; a router's
    // advertisement; to a container or to the gateway.
    let forged = [
        link_control(136, PEER),
        behind_destination_options(link_control(136, PEER)),
        link_control(137, PEER),
        link_control(134, PEER),
        link_control(136, GATEWAY),
        // A unicast solicitation behind an extension header: not the datapath's to answer.
        behind_destination_options(link_control(135, GATEWAY)),
    ];
    for (i, packet) in forged.iter().enumerate() {
        assert_eq!(run_tc(fd, packet).unwrap().verdict, DROP, "forged message {i}");
    }
    assert_eq!(counter(&mut dp, Counter::DropNdpForbidden), forged.len() as u64);
    // Other ICMPv6 (an echo request) still goes through, also behind an extension header.
    let echo = frame(PEER_MAC, SENDER, PEER, ICMPV6, 64, &[128, 0, 0, 0, 0, 1, 0, 1]);
    for packet in [echo.clone(), behind_destination_options(echo)] {
        assert_eq!(run_tc(fd, &packet).unwrap().verdict, REDIRECT);
    }
    // A chain of extension headers longer than the datapath looks into: dropped.
    let mut long = tcp(PEER_MAC, SENDER, PEER);
    for _ in 0..5 {
        long = behind_destination_options(long);
    }
    assert_eq!(run_tc(fd, &long).unwrap().verdict, DROP);
    assert_eq!(counter(&mut dp, Counter::DropMalformed), 1);
}

#[test]
fn ipv6_to_a_container_of_the_network_is_delivered_with_only_the_macs_rewritten() {
    let mut dp = datapath(0);
    let fd = dp.program_fd().unwrap();
    // Addressed to the gateway's MAC, as a routed packet would be: delivered as a bridge would.
    let packet = tcp(GATEWAY_MAC, SENDER, PEER);
    let out = run_tc(fd, &packet).unwrap();
    assert_eq!(out.verdict, REDIRECT);
    let mut expected = packet.clone();
    expected[0..6].copy_from_slice(&PEER_MAC);
    expected[6..12].copy_from_slice(&SENDER_MAC);
    assert_eq!(out.packet, expected, "hop limit and payload unchanged");
    assert_eq!(counter(&mut dp, Counter::Redirected), 1);
}

#[test]
fn ipv6_drops_are_counted_by_reason() {
    let cases = [
        (0, tcp(PEER_MAC, "fd00:1::99", PEER), DROP, Counter::DropSpoofedSource),
        (0, tcp(PEER_MAC, SENDER_LINK_LOCAL, PEER), DROP, Counter::DropSpoofedSource),
        (0, tcp(GATEWAY_MAC, SENDER, OTHER_NET), DROP, Counter::DropIsolation),
        (0, tcp(GATEWAY_MAC, SENDER, "::1"), DROP, Counter::DropMartian),
        (0, tcp(GATEWAY_MAC, SENDER, "::ffff:10.0.0.3"), DROP, Counter::DropMartian),
        (iface_flags::ICC_DISABLED, tcp(PEER_MAC, SENDER, PEER), DROP, Counter::DropIcc),
        (iface_flags::INTERNAL, tcp(GATEWAY_MAC, SENDER, "2001:db8::1"), DROP, Counter::DropInternal),
        // MLD report and router solicitation: nothing floods, nothing advertises.
        (0, frame([0x33, 0x33, 0, 0, 0, 0x16], SENDER_LINK_LOCAL, "ff02::16", ICMPV6, 1, &[143, 0, 0, 0, 0, 0, 0, 0]), DROP, Counter::DropIpv6Multicast),
        (0, frame([0x33, 0x33, 0, 0, 0, 2], SENDER_LINK_LOCAL, "ff02::2", ICMPV6, 255, &[133, 0, 0, 0, 0, 0, 0, 0]), DROP, Counter::DropIpv6Multicast),
        // The gateway and what leaves the network: the host's (icc=false keeps the gateway).
        (iface_flags::ICC_DISABLED, tcp(GATEWAY_MAC, SENDER, GATEWAY), PASS, Counter::ToHost),
        (0, tcp(GATEWAY_MAC, SENDER, "2001:db8::1"), PASS, Counter::ToHost),
    ];
    for (flags, packet, verdict, reason) in cases {
        let mut dp = datapath(flags);
        let fd = dp.program_fd().unwrap();
        assert_eq!(run_tc(fd, &packet).unwrap().verdict, verdict, "{reason:?}");
        assert_eq!(counter(&mut dp, reason), 1, "{reason:?}");
    }
}

#[test]
fn an_endpoint_without_ipv6_sends_none() {
    let mut dp = datapath(0);
    let mut iface = dp.iface(TEST_IFINDEX).unwrap().unwrap();
    iface.ipv6 = [0; 4];
    iface.gateway_ipv6 = [0; 4];
    dp.set_iface(TEST_IFINDEX, iface).unwrap();
    let fd = dp.program_fd().unwrap();
    for packet in [tcp(PEER_MAC, SENDER, PEER), solicitation(SENDER, GATEWAY, true, 255)] {
        assert_eq!(run_tc(fd, &packet).unwrap().verdict, DROP);
    }
    assert_eq!(counter(&mut dp, Counter::DropUnsupportedProtocol), 2);
}

#[test]
fn the_uplink_drops_ipv6_to_or_from_containers_and_leaves_the_rest_to_the_host() {
    let mut dp = datapath(0);
    let fd = dp.program_fd_of(datapath_common::program_names::FROM_UPLINK).unwrap();
    let lan = "2001:db8::7";
    let from_lan = |src: &str, dst: &str| {
        let mut p = tcp([0x02, 0, 0, 0, 0, 1], src, dst);
        p[6..12].copy_from_slice(&[0x02, 0, 0, 0, 0, 2]);
        p
    };
    // A LAN peer routing to a container's address through the host, or posing as a container.
    assert_eq!(run_tc(fd, &from_lan(lan, PEER)).unwrap().verdict, DROP);
    assert_eq!(counter(&mut dp, Counter::DropUplinkToContainer), 1);
    assert_eq!(run_tc(fd, &from_lan(PEER, "2001:db8::1")).unwrap().verdict, DROP);
    assert_eq!(counter(&mut dp, Counter::DropUplinkSpoofed), 1);
    // The host's own IPv6 traffic passes untouched.
    let to_host = from_lan(lan, "2001:db8::1");
    let out = run_tc(fd, &to_host).unwrap();
    assert_eq!((out.verdict, out.packet), (PASS, to_host));
    assert_eq!(counter(&mut dp, Counter::UplinkToHost), 1);
}

/// Ethernet + IPv4 + UDP (checksum none) from `src` to `dst`, header checksum filled in.
fn udp4(src: [u8; 4], dst: [u8; 4]) -> Vec<u8> {
    let payload = b"from an IPv6-only container";
    let total = (20 + 8 + payload.len()) as u16;
    let mut ip = vec![0x45, 0, 0, 0, 0, 1, 0x40, 0, 64, 17, 0, 0];
    ip[2..4].copy_from_slice(&total.to_be_bytes());
    ip.extend_from_slice(&src);
    ip.extend_from_slice(&dst);
    let sum = internet_checksum(&ip);
    ip[10..12].copy_from_slice(&sum.to_be_bytes());
    let mut p = Vec::new();
    p.extend_from_slice(&GATEWAY_MAC);
    p.extend_from_slice(&SENDER_MAC);
    p.extend_from_slice(&[0x08, 0x00]);
    p.extend_from_slice(&ip);
    p.extend_from_slice(&[0x9c, 0x40, 0x00, 0x35]);
    p.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
    p.extend_from_slice(&[0, 0]);
    p.extend_from_slice(payload);
    p
}

/// An ARP request from the sender's MAC: who has `target`, tell `sender`.
fn arp_request(sender: [u8; 4], target: [u8; 4]) -> Vec<u8> {
    let mut p = vec![0xff; 6];
    p.extend_from_slice(&SENDER_MAC);
    p.extend_from_slice(&[0x08, 0x06, 0, 1, 0x08, 0x00, 6, 4, 0, 1]);
    p.extend_from_slice(&SENDER_MAC);
    p.extend_from_slice(&sender);
    p.extend_from_slice(&[0; 6]);
    p.extend_from_slice(&target);
    p
}

#[test]
fn an_endpoint_of_an_ipv6_only_network_speaks_ipv6_and_nothing_of_ipv4() {
    let mut dp = datapath(iface_flags::MASQUERADE);
    // The sender's network has no IPv4 side: its interface entry's IPv4 fields are zero.
    let mut iface = dp.iface(TEST_IFINDEX).unwrap().unwrap();
    (iface.ipv4, iface.gateway_ipv4) = ([0; 4], [0; 4]);
    dp.set_iface(TEST_IFINDEX, iface).unwrap();
    let fd = dp.program_fd().unwrap();
    // IPv6 as before: its gateway answered, a container of the network reached.
    let out = run_tc(fd, &solicitation(SENDER, GATEWAY, true, 255)).unwrap();
    assert_eq!(out.packet, advertisement(SENDER, GATEWAY, GATEWAY_MAC, ROUTER | SOLICITED | OVERRIDE));
    assert_eq!(run_tc(fd, &tcp(GATEWAY_MAC, SENDER, PEER)).unwrap().verdict, REDIRECT);
    // IPv4 from the all-zero address the entry holds (which a plain source check would take as
    // its own): to a container of the same network id, to the gateway's zero address, to the
    // outside through masquerade; and ARP, also for the zero "gateway". All dropped, counted.
    let forged = [
        udp4([0; 4], [10, 0, 0, 3]),
        udp4([0; 4], [0; 4]),
        udp4([0; 4], [192, 0, 2, 1]),
        udp4([10, 0, 0, 9], [10, 0, 0, 3]),
        arp_request([0; 4], [0; 4]),
        arp_request([0; 4], [10, 0, 0, 3]),
    ];
    for (i, packet) in forged.iter().enumerate() {
        assert_eq!(run_tc(fd, packet).unwrap().verdict, DROP, "IPv4 frame {i}");
    }
    assert_eq!(counter(&mut dp, Counter::DropUnsupportedProtocol), forged.len() as u64);
    assert_eq!(counter(&mut dp, Counter::ArpReplied), 0);
}
