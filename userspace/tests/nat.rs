//! NAT datapath tests: the real programs on hand-made packets (BPF_PROG_TEST_RUN), every rewritten
//! packet compared byte for byte with one built here from scratch, checksums computed here
//! independently of the kernel's incremental updates.
//!
//! Masquerade needs a FIB answer, and a test run looks routes up in the caller's namespace: each
//! test runs in a private namespace with an "uplink" (192.0.2.1/24 on up0, default route via
//! 192.0.2.254 whose MAC is a permanent neighbour entry), so the answer is known exactly.
//! Needs root.
use std::{net::IpAddr, process::Command, sync::Arc};

use bpfnet::{
    datapath::{Datapath, LoadOptions},
    netns,
    test_run::{run_tc, time_tc, TestRunResult},
};
use datapath_common::{
    iface_flags, program_names, Counter, CtKey, EndpointInfo, IfaceInfo, IpKey, PortKey, PortTarget, GATEWAY_MAC,
};

const PASS: u32 = 0;
const DROP: u32 = 2;
const REDIRECT: u32 = 7;
/// In a test run the packet's device is loopback.
const TEST_IFINDEX: u32 = 1;

const CONTAINER_IP: [u8; 4] = [10, 0, 0, 2];
const CONTAINER_MAC: [u8; 6] = [0x02, 0x42, 10, 0, 0, 2];
const OTHER_CONTAINER_IP: [u8; 4] = [10, 0, 0, 3];
const OTHER_CONTAINER_MAC: [u8; 6] = [0x02, 0x42, 10, 0, 0, 3];
const GATEWAY_IP: [u8; 4] = [10, 0, 0, 1];
const UPLINK_IP: [u8; 4] = [192, 0, 2, 1];
const UPLINK_MAC: [u8; 6] = [0x02, 0, 0, 0, 1, 1];
const ROUTER_IP: [u8; 4] = [192, 0, 2, 254];
const ROUTER_MAC: [u8; 6] = [0x02, 0, 0, 0, 0xfe, 0xfe];
const SERVER_IP: [u8; 4] = [198, 51, 100, 7];
const CLIENT_IP: [u8; 4] = [203, 0, 113, 9];
/// Another network's container, publishing a port (its host-side veth is not the test one).
const PUBLISHER_IP: [u8; 4] = [10, 1, 0, 5];
const PUBLISHER_MAC: [u8; 6] = [0x02, 0x42, 10, 1, 0, 5];
const PUBLISHER_GATEWAY: [u8; 4] = [10, 1, 0, 1];
const PUBLISHER_IFINDEX: u32 = 42;
const NAT_PORTS: std::ops::RangeInclusive<u16> = 61000..=65535;

const TCP: u8 = 6;
const UDP: u8 = 17;
const ICMP: u8 = 1;

// ---- packets, with checksums computed from scratch ----

fn checksum(chunks: &[&[u8]]) -> u16 {
    let mut sum: u32 = 0;
    for chunk in chunks {
        for pair in chunk.chunks(2) {
            let word = if pair.len() == 2 { u16::from_be_bytes([pair[0], pair[1]]) } else { u16::from_be_bytes([pair[0], 0]) };
            sum += word as u32;
        }
    }
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

#[derive(Clone, Copy)]
struct Ip {
    src: [u8; 4],
    dst: [u8; 4],
    proto: u8,
    ttl: u8,
    id: u16,
    /// Flags and fragment offset (host order), e.g. 0x4000 for DF.
    frag: u16,
}

fn ip_header(ip: &Ip, payload_len: usize) -> Vec<u8> {
    let total = (20 + payload_len) as u16;
    let mut h = vec![0x45, 0];
    h.extend_from_slice(&total.to_be_bytes());
    h.extend_from_slice(&ip.id.to_be_bytes());
    h.extend_from_slice(&ip.frag.to_be_bytes());
    h.extend_from_slice(&[ip.ttl, ip.proto, 0, 0]);
    h.extend_from_slice(&ip.src);
    h.extend_from_slice(&ip.dst);
    let c = checksum(&[&h]);
    h[10..12].copy_from_slice(&c.to_be_bytes());
    h
}

/// An L4 segment with its checksum (over the pseudo-header for TCP/UDP) filled in.
fn l4(ip: &Ip, mut segment: Vec<u8>, full_len: Option<usize>) -> Vec<u8> {
    let csum_off = match ip.proto {
        TCP => 16,
        UDP => 6,
        _ => 2,
    };
    segment[csum_off] = 0;
    segment[csum_off + 1] = 0;
    let c = if ip.proto == ICMP {
        checksum(&[&segment])
    } else {
        let len = full_len.unwrap_or(segment.len()) as u16;
        let pseudo = [&ip.src[..], &ip.dst[..], &[0, ip.proto], &len.to_be_bytes()].concat();
        checksum(&[&pseudo, &segment])
    };
    segment[csum_off..csum_off + 2].copy_from_slice(&c.to_be_bytes());
    segment
}

fn tcp_segment(sport: u16, dport: u16, flags: u8, payload: &[u8]) -> Vec<u8> {
    let mut s = Vec::new();
    s.extend_from_slice(&sport.to_be_bytes());
    s.extend_from_slice(&dport.to_be_bytes());
    s.extend_from_slice(&[0, 0, 0x10, 0x01, 0, 0, 0, 0, 0x50, flags, 0xff, 0xff, 0, 0, 0, 0]);
    s.extend_from_slice(payload);
    s
}

fn udp_datagram(sport: u16, dport: u16, payload: &[u8]) -> Vec<u8> {
    let mut s = Vec::new();
    s.extend_from_slice(&sport.to_be_bytes());
    s.extend_from_slice(&dport.to_be_bytes());
    s.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
    s.extend_from_slice(&[0, 0]);
    s.extend_from_slice(payload);
    s
}

fn icmp_echo(kind: u8, id: u16, seq: u16) -> Vec<u8> {
    let mut s = vec![kind, 0, 0, 0];
    s.extend_from_slice(&id.to_be_bytes());
    s.extend_from_slice(&seq.to_be_bytes());
    s.extend_from_slice(b"ping payload");
    s
}

fn frame(dst: [u8; 6], src: [u8; 6], ip: &Ip, l4: &[u8]) -> Vec<u8> {
    let mut p = Vec::new();
    p.extend_from_slice(&dst);
    p.extend_from_slice(&src);
    p.extend_from_slice(&[0x08, 0x00]);
    p.extend_from_slice(&ip_header(ip, l4.len()));
    p.extend_from_slice(l4);
    p
}

/// A whole packet: Ethernet, IPv4 and an L4 segment with exact checksums.
fn packet(dst: [u8; 6], src: [u8; 6], ip: Ip, segment: Vec<u8>) -> Vec<u8> {
    let segment = l4(&ip, segment, None);
    frame(dst, src, &ip, &segment)
}

fn from_container(src: [u8; 4], proto: u8, ttl: u8) -> Ip {
    Ip { src, dst: SERVER_IP, proto, ttl, id: 0x1111, frag: 0x4000 }
}

fn port_at(p: &[u8], offset: usize) -> u16 {
    u16::from_be_bytes([p[offset], p[offset + 1]])
}

const L4: usize = 14 + 20;

// ---- the private namespace the FIB answers in ----

struct TestNetns {
    name: String,
    uplink_index: u32,
}

fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("running ip");
    assert!(out.status.success(), "ip {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

impl TestNetns {
    fn new(tag: &str) -> Self {
        // The lab's sweep removes namespaces with this prefix that a killed run left.
        let name = format!("bpfnetlab-nat-{tag}-{}", std::process::id());
        let _ = Command::new("ip").args(["netns", "del", &name]).output();
        ip(&["netns", "add", &name]);
        let ns = TestNetns { name, uplink_index: 0 };
        let n = ns.name.as_str();
        ip(&["-n", n, "link", "set", "lo", "up"]);
        ip(&["-n", n, "link", "add", "up0", "address", "02:00:00:00:01:01", "type", "veth", "peer", "name", "up1"]);
        ip(&["-n", n, "link", "set", "up0", "up"]);
        ip(&["-n", n, "link", "set", "up1", "up"]);
        ip(&["-n", n, "addr", "add", "192.0.2.1/24", "dev", "up0"]);
        ip(&["-n", n, "neigh", "replace", "192.0.2.254", "lladdr", "02:00:00:00:fe:fe", "dev", "up0", "nud", "permanent"]);
        ip(&["-n", n, "route", "add", "default", "via", "192.0.2.254"]);
        let out = Command::new("ip").args(["-n", n, "-o", "link", "show", "up0"]).output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        let uplink_index = text.split(':').next().unwrap().trim().parse().unwrap();
        let mut ns = ns;
        ns.uplink_index = uplink_index;
        ns
    }

    /// Runs `f` on a datapath loaded inside the namespace (forwarding on), with the container
    /// 10.0.0.2 sending on the test interface (network flags `flags`) and up0 as the uplink.
    fn run(&self, flags: u32, f: impl FnOnce(&mut Lab) + Send + 'static) {
        let file = Arc::new(std::fs::File::open(format!("/run/netns/{}", self.name)).unwrap());
        let uplink_index = self.uplink_index;
        netns::run_in(file, move || async move {
            std::fs::write("/proc/sys/net/ipv4/ip_forward", "1")?;
            let options = LoadOptions { ct_entries: 4096, ..Default::default() };
            let mut dp = Datapath::load_unpinned(&options).expect("loading the datapath (run as root)");
            dp.set_uplinks(&[(uplink_index, IpAddr::from(UPLINK_IP), false)])?;
            // As the daemon does: the namespace's addresses, where ports published on every
            // address answer.
            dp.set_host_addrs(&[IpAddr::from(UPLINK_IP)])?;
            let container = dp.program_fd_of(program_names::FROM_CONTAINER)?;
            let uplink = dp.program_fd_of(program_names::FROM_UPLINK)?;
            let mut lab = Lab { dp, container, uplink, flags };
            lab.send_as(CONTAINER_IP, CONTAINER_MAC);
            f(&mut lab);
            Ok(())
        })
        .unwrap();
    }
}

impl Drop for TestNetns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.name]).output();
    }
}

struct Lab {
    dp: Datapath,
    container: i32,
    uplink: i32,
    flags: u32,
}

impl Lab {
    /// The test interface now belongs to the container `ip`/`mac`.
    fn send_as(&mut self, ip: [u8; 4], mac: [u8; 6]) {
        let info = IfaceInfo { network_id: 1, ipv4: ip, gateway_ipv4: GATEWAY_IP, flags: self.flags, mac, _pad: [0; 2] };
        self.dp.set_iface(TEST_IFINDEX, info).unwrap();
    }
    fn from_container(&self, p: &[u8]) -> TestRunResult {
        run_tc(self.container, p).unwrap()
    }
    fn from_uplink(&self, p: &[u8]) -> TestRunResult {
        run_tc(self.uplink, p).unwrap()
    }
    /// Publishes `host_port` (on every address, or on `on`) to `to`:`container_port`.
    fn publish(&mut self, on: Option<[u8; 4]>, host_port: u16, proto: u8, to: [u8; 4], container_port: u16) {
        let addr = on.map_or(IpKey { addr: [0; 4] }, IpKey::from_ipv4_octets);
        let key = PortKey { addr, port: host_port.to_be(), proto, _pad: 0 };
        let target = PortTarget { addr: IpKey::from_ipv4_octets(to), port: container_port.to_be(), _pad: 0 };
        self.dp.set_port(key, target).unwrap();
    }
    /// Makes `ip` a container whose host-side veth is `ifindex`, on a network with `gateway`.
    fn add_container(&mut self, ip: [u8; 4], mac: [u8; 6], ifindex: u32, network_id: u32, gateway: [u8; 4]) {
        let info = EndpointInfo { host_ifindex: ifindex, network_id, mac, _pad: [0; 2] };
        self.dp.set_endpoint(IpAddr::from(ip), info).unwrap();
        let iface = IfaceInfo { network_id, ipv4: ip, gateway_ipv4: gateway, flags: self.flags, mac, _pad: [0; 2] };
        self.dp.set_iface(ifindex, iface).unwrap();
    }
    fn counter(&mut self, which: Counter) -> u64 {
        self.dp.counters().unwrap().into_iter().find(|(c, _)| *c == which).unwrap().1
    }
}

const MASQ: u32 = iface_flags::MASQUERADE;

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
            let sent = l4(&sent_ip, tcp_segment(sport, 80, 0x18, &[0u8; 64]), None);
            let mut q = ip_header(&sent_ip, sent.len());
            q.extend_from_slice(&sent[..8]);
            q
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
            let echo = l4(&sent_ip, icmp_echo(8, id, 1), None);
            let mut q = ip_header(&sent_ip, echo.len());
            q.extend_from_slice(&echo[..8]);
            q
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
    });
}

#[test]
fn icmp_errors_a_container_sends_about_translated_packets_leave_translated() {
    TestNetns::new("icmpout").run(MASQ, |lab| {
        lab.add_container(CONTAINER_IP, CONTAINER_MAC, TEST_IFINDEX, 1, GATEWAY_IP);
        // The first 28 bytes of a datagram as `ip` carries it: what an ICMP error quotes.
        let quote = |ip: &Ip, sport: u16, dport: u16| {
            let d = l4(ip, udp_datagram(sport, dport, b"query"), None);
            let mut q = ip_header(ip, d.len());
            q.extend_from_slice(&d[..8]);
            q
        };
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
        assert_eq!(gw_port, 41000, "the client's port is kept where it is free");
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
