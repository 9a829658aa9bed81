//! The lab the datapath tests run the real programs in (BPF_PROG_TEST_RUN): hand-made packets
//! with checksums computed here from scratch, and a private namespace whose FIB answers are
//! known exactly. Shared by the NAT and the load-balancing tests.
#![allow(dead_code)]
use std::{net::IpAddr, process::Command, sync::Arc};

use bpfnet::{
    datapath::{Datapath, LoadOptions},
    maglev,
    netns,
    datapath::UplinkAddresses,
    test_run::{run_tc, run_xdp, TestRunResult},
};
use datapath_common::{
    iface_flags, program_names, services::flow_hash, BackendInfo, Counter, EndpointInfo, IfaceInfo, IpKey, PortKey, PortTarget,
    ServiceInfo,
};

pub const PASS: u32 = 0;
pub const DROP: u32 = 2;
pub const REDIRECT: u32 = 7;
pub const XDP_DROP: u32 = 1;
pub const XDP_PASS: u32 = 2;
pub const XDP_REDIRECT: u32 = 4;
/// In a test run the packet's device is loopback.
pub const TEST_IFINDEX: u32 = 1;

pub const CONTAINER_IP: [u8; 4] = [10, 0, 0, 2];
pub const CONTAINER_MAC: [u8; 6] = [0x02, 0x42, 10, 0, 0, 2];
pub const OTHER_CONTAINER_IP: [u8; 4] = [10, 0, 0, 3];
pub const OTHER_CONTAINER_MAC: [u8; 6] = [0x02, 0x42, 10, 0, 0, 3];
pub const GATEWAY_IP: [u8; 4] = [10, 0, 0, 1];
pub const UPLINK_IP: [u8; 4] = [192, 0, 2, 1];
pub const UPLINK_MAC: [u8; 6] = [0x02, 0, 0, 0, 1, 1];
pub const ROUTER_IP: [u8; 4] = [192, 0, 2, 254];
pub const ROUTER_MAC: [u8; 6] = [0x02, 0, 0, 0, 0xfe, 0xfe];
pub const SERVER_IP: [u8; 4] = [198, 51, 100, 7];
pub const CLIENT_IP: [u8; 4] = [203, 0, 113, 9];
/// Another network's container, publishing a port (its host-side veth is not the test one).
pub const PUBLISHER_IP: [u8; 4] = [10, 1, 0, 5];
pub const PUBLISHER_MAC: [u8; 6] = [0x02, 0x42, 10, 1, 0, 5];
pub const PUBLISHER_GATEWAY: [u8; 4] = [10, 1, 0, 1];
pub const PUBLISHER_IFINDEX: u32 = 42;
pub const NAT_PORTS: std::ops::RangeInclusive<u16> = 61000..=65535;

pub const TCP: u8 = 6;
pub const UDP: u8 = 17;
pub const ICMP: u8 = 1;
pub const ICMPV6: u8 = 58;

// IPv6: the container's address is `fd00:1::` and the last byte of its IPv4 address.
pub const CONTAINER_IP6: &str = "fd00:1::2";
pub const GATEWAY_IP6: &str = "fd00:1::1";
pub const UPLINK_IP6: &str = "2001:db8:2::1";
pub const ROUTER_IP6: &str = "2001:db8:2::fe";
pub const SERVER_IP6: &str = "2001:db8:100::7";

// ---- packets, with checksums computed from scratch ----

pub fn checksum(chunks: &[&[u8]]) -> u16 {
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
pub struct Ip {
    pub src: [u8; 4],
    pub dst: [u8; 4],
    pub proto: u8,
    pub ttl: u8,
    pub id: u16,
    /// Flags and fragment offset (host order), e.g. 0x4000 for DF.
    pub frag: u16,
}

pub fn ip_header(ip: &Ip, payload_len: usize) -> Vec<u8> {
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
pub fn l4(ip: &Ip, mut segment: Vec<u8>, full_len: Option<usize>) -> Vec<u8> {
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

pub fn tcp_segment(sport: u16, dport: u16, flags: u8, payload: &[u8]) -> Vec<u8> {
    tcp_segment_at(sport, dport, flags, 0x1001, 0, payload)
}

/// A TCP segment with sequence number `seq` and acknowledgment number `ack`.
pub fn tcp_segment_at(sport: u16, dport: u16, flags: u8, seq: u32, ack: u32, payload: &[u8]) -> Vec<u8> {
    let mut s = Vec::new();
    s.extend_from_slice(&sport.to_be_bytes());
    s.extend_from_slice(&dport.to_be_bytes());
    s.extend_from_slice(&seq.to_be_bytes());
    s.extend_from_slice(&ack.to_be_bytes());
    s.extend_from_slice(&[0x50, flags, 0xff, 0xff, 0, 0, 0, 0]);
    s.extend_from_slice(payload);
    s
}

pub fn udp_datagram(sport: u16, dport: u16, payload: &[u8]) -> Vec<u8> {
    let mut s = Vec::new();
    s.extend_from_slice(&sport.to_be_bytes());
    s.extend_from_slice(&dport.to_be_bytes());
    s.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
    s.extend_from_slice(&[0, 0]);
    s.extend_from_slice(payload);
    s
}

pub fn icmp_echo(kind: u8, id: u16, seq: u16) -> Vec<u8> {
    let mut s = vec![kind, 0, 0, 0];
    s.extend_from_slice(&id.to_be_bytes());
    s.extend_from_slice(&seq.to_be_bytes());
    s.extend_from_slice(b"ping payload");
    s
}

pub fn frame(dst: [u8; 6], src: [u8; 6], ip: &Ip, l4: &[u8]) -> Vec<u8> {
    let mut p = Vec::new();
    p.extend_from_slice(&dst);
    p.extend_from_slice(&src);
    p.extend_from_slice(&[0x08, 0x00]);
    p.extend_from_slice(&ip_header(ip, l4.len()));
    p.extend_from_slice(l4);
    p
}

/// A whole packet: Ethernet, IPv4 and an L4 segment with exact checksums.
pub fn packet(dst: [u8; 6], src: [u8; 6], ip: Ip, segment: Vec<u8>) -> Vec<u8> {
    let segment = l4(&ip, segment, None);
    frame(dst, src, &ip, &segment)
}

pub fn from_container(src: [u8; 4], proto: u8, ttl: u8) -> Ip {
    Ip { src, dst: SERVER_IP, proto, ttl, id: 0x1111, frag: 0x4000 }
}

/// What an ICMP error quotes of a packet `ip` carried with the (checksummed) L4 `segment`: its
/// IP header and the first 8 bytes of the segment.
pub fn icmp_quote(ip: &Ip, segment: &[u8]) -> Vec<u8> {
    let mut q = ip_header(ip, segment.len());
    q.extend_from_slice(&segment[..8]);
    q
}

pub fn v6(text: &str) -> [u8; 16] {
    text.parse::<std::net::Ipv6Addr>().unwrap().octets()
}

/// The IPv6 address of the container whose IPv4 address is `ip` (see [`CONTAINER_IP6`]).
pub fn v6_of(ip: [u8; 4]) -> String {
    format!("fd00:1::{:x}", ip[3])
}

#[derive(Clone, Copy)]
pub struct Ip6 {
    pub src: [u8; 16],
    pub dst: [u8; 16],
    /// The upper-layer protocol (no extension headers).
    pub next: u8,
    pub hop_limit: u8,
}

impl Ip6 {
    pub fn new(src: &str, dst: &str, next: u8, hop_limit: u8) -> Self {
        Ip6 { src: v6(src), dst: v6(dst), next, hop_limit }
    }
}

/// A whole IPv6 packet: Ethernet, IPv6 and an L4 segment whose checksum (TCP, UDP and ICMPv6
/// all over the pseudo-header) is computed here from scratch.
pub fn packet6(dst: [u8; 6], src: [u8; 6], ip: Ip6, mut segment: Vec<u8>) -> Vec<u8> {
    let csum_off = match ip.next {
        TCP => 16,
        UDP => 6,
        _ => 2,
    };
    segment[csum_off..csum_off + 2].fill(0);
    let pseudo = [&ip.src[..], &ip.dst[..], &(segment.len() as u32).to_be_bytes(), &[0, 0, 0, ip.next]].concat();
    let c = checksum(&[&pseudo, &segment]);
    segment[csum_off..csum_off + 2].copy_from_slice(&c.to_be_bytes());
    let mut p = Vec::new();
    p.extend_from_slice(&dst);
    p.extend_from_slice(&src);
    p.extend_from_slice(&[0x86, 0xdd, 0x60, 0, 0, 0]);
    p.extend_from_slice(&(segment.len() as u16).to_be_bytes());
    p.extend_from_slice(&[ip.next, ip.hop_limit]);
    p.extend_from_slice(&ip.src);
    p.extend_from_slice(&ip.dst);
    p.extend_from_slice(&segment);
    p
}

/// Where the L4 header of an IPv6 packet without extension headers starts.
pub const L4_6: usize = 14 + 40;

pub fn port_at(p: &[u8], offset: usize) -> u16 {
    u16::from_be_bytes([p[offset], p[offset + 1]])
}

pub const L4: usize = 14 + 20;

// ---- the private namespace the FIB answers in ----

pub struct TestNetns {
    pub name: String,
    pub uplink_index: u32,
}

pub fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("running ip");
    assert!(out.status.success(), "ip {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

impl TestNetns {
    pub fn new(tag: &str) -> Self {
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
        ip(&["-n", n, "addr", "add", "2001:db8:2::1/64", "dev", "up0", "nodad"]);
        ip(&["-n", n, "-6", "neigh", "replace", ROUTER_IP6, "lladdr", "02:00:00:00:fe:fe", "dev", "up0", "nud", "permanent"]);
        ip(&["-n", n, "-6", "route", "add", "default", "via", ROUTER_IP6]);
        let out = Command::new("ip").args(["-n", n, "-o", "link", "show", "up0"]).output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        let uplink_index = text.split(':').next().unwrap().trim().parse().unwrap();
        let mut ns = ns;
        ns.uplink_index = uplink_index;
        ns
    }

    /// Runs `f` on a datapath loaded inside the namespace (forwarding on), with the container
    /// 10.0.0.2 sending on the test interface (network flags `flags`) and up0 as the uplink.
    pub fn run(&self, flags: u32, f: impl FnOnce(&mut Lab) + Send + 'static) {
        // New connections wait in a table a quarter of this size: room for the thousands of
        // half-open ones the load-balancing tests make.
        self.run_with(LoadOptions { ct_entries: 65_536, ..Default::default() }, flags, f)
    }

    /// As [`Self::run`], with the datapath loaded with `options`.
    pub fn run_with(&self, options: LoadOptions, flags: u32, f: impl FnOnce(&mut Lab) + Send + 'static) {
        let file = Arc::new(std::fs::File::open(format!("/run/netns/{}", self.name)).unwrap());
        let uplink_index = self.uplink_index;
        netns::run_in(file, move || async move {
            std::fs::write("/proc/sys/net/ipv4/ip_forward", "1")?;
            // The test packets' interface is loopback: IPv6 FIB lookups answer where it forwards.
            std::fs::write("/proc/sys/net/ipv6/conf/all/forwarding", "1")?;
            let mut dp = Datapath::load_unpinned(&options).expect("loading the datapath (run as root)");
            dp.set_uplinks(&[UplinkAddresses { ifindex: uplink_index, ipv4: UPLINK_IP.into(), ipv6: Some(UPLINK_IP6.parse().unwrap()), veth: false }])?;
            // As the daemon does: the namespace's addresses, where ports published on every
            // address answer.
            dp.set_host_addrs(&[IpAddr::from(UPLINK_IP), UPLINK_IP6.parse().unwrap()])?;
            let container = dp.program_fd_of(program_names::FROM_CONTAINER)?;
            let uplink = dp.program_fd_of(program_names::FROM_UPLINK)?;
            let uplink_xdp = dp.program_fd_of(program_names::XDP_FROM_UPLINK)?;
            let mut lab = Lab { dp, container, uplink, uplink_xdp, flags, uplink_index };
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

pub struct Lab {
    pub dp: Datapath,
    pub container: i32,
    pub uplink: i32,
    pub uplink_xdp: i32,
    pub flags: u32,
    /// up0's.
    pub uplink_index: u32,
}

impl Lab {
    /// The test interface now belongs to the container `ip`/`mac`.
    pub fn send_as(&mut self, ip: [u8; 4], mac: [u8; 6]) {
        let words = |text: &str| IpKey::from(text.parse::<IpAddr>().unwrap()).addr;
        let info = IfaceInfo {
            network_id: 1,
            ipv4: ip,
            gateway_ipv4: GATEWAY_IP,
            flags: self.flags,
            mac,
            ipv6: words(&v6_of(ip)),
            gateway_ipv6: words(GATEWAY_IP6),
            ..Default::default()
        };
        self.dp.set_iface(TEST_IFINDEX, info).unwrap();
    }
    pub fn from_container(&self, p: &[u8]) -> TestRunResult {
        run_tc(self.container, p).unwrap()
    }
    pub fn from_uplink(&self, p: &[u8]) -> TestRunResult {
        run_tc(self.uplink, p).unwrap()
    }
    /// The uplink's XDP program on frame `p`.
    pub fn from_uplink_xdp(&self, p: &[u8]) -> TestRunResult {
        run_xdp(self.uplink_xdp, p).unwrap()
    }
    /// Publishes `host_port` (on every address, or on `on`) to `to`:`container_port`.
    pub fn publish(&mut self, on: Option<[u8; 4]>, host_port: u16, proto: u8, to: [u8; 4], container_port: u16) {
        self.publish_with_flags(on, host_port, proto, to, container_port, 0);
    }
    /// [`Self::publish`] with `port_flags`.
    pub fn publish_with_flags(&mut self, on: Option<[u8; 4]>, host_port: u16, proto: u8, to: [u8; 4], container_port: u16, flags: u16) {
        let addr = on.map_or(PortKey::any_ipv4_address(0, 0).addr, IpKey::from_ipv4_octets);
        let key = PortKey { addr, port: host_port.to_be(), proto, _pad: 0 };
        let target = PortTarget { addr: IpKey::from_ipv4_octets(to), port: container_port.to_be(), flags, ..PortTarget::default() };
        self.dp.set_port(key, target).unwrap();
    }
    /// Makes `ip` a container whose host-side veth is `ifindex`, on a network with `gateway`.
    pub fn add_container(&mut self, ip: [u8; 4], mac: [u8; 6], ifindex: u32, network_id: u32, gateway: [u8; 4]) {
        let info = EndpointInfo { host_ifindex: ifindex, network_id, mac, ..Default::default() };
        self.dp.set_endpoint(IpAddr::from(ip), info).unwrap();
        let iface = IfaceInfo { network_id, ipv4: ip, gateway_ipv4: gateway, flags: self.flags, mac, _pad: [0; 2], ..Default::default() };
        self.dp.set_iface(ifindex, iface).unwrap();
    }
    pub fn counter(&mut self, which: Counter) -> u64 {
        self.dp.counters().unwrap().into_iter().find(|(c, _)| *c == which).unwrap().1
    }
}

pub const MASQ: u32 = iface_flags::MASQUERADE;

// ---- a service as the daemon writes it (the load-balancing and XDP tests) ----

pub const VIP: [u8; 4] = [10, 0, 0, 100];
pub const VIP_PORT: u16 = 80;
pub const BACKEND_PORT: u16 = 8080;
pub const PUBLISHED_PORT: u16 = 8000;
pub const M: u32 = datapath_common::services::DEFAULT_MAGLEV_TABLE_SIZE;
pub const SERVICE: u32 = 1;
pub const NETWORK: u32 = 1;

pub fn backend_ip(i: usize) -> [u8; 4] {
    [10, 0, 0, 11 + i as u8]
}
pub fn backend_mac(i: usize) -> [u8; 6] {
    [0x02, 0x42, 10, 0, 0, 11 + i as u8]
}
pub fn backend_ifindex(i: usize) -> u32 {
    101 + i as u32
}

/// A service as the daemon writes it: backends `0..n` (ids 1..=n) on network 1, its VIP, its
/// published port, its Maglev table. Returns the table (backend ids).
pub fn install(lab: &mut Lab, proto: u8, backends: &[usize], affinity_ns: u64) -> Vec<u32> {
    for &i in backends {
        let flags = lab.flags;
        lab.flags |= iface_flags::SERVICE_BACKEND;
        lab.add_container(backend_ip(i), backend_mac(i), backend_ifindex(i), NETWORK, GATEWAY_IP);
        lab.flags = flags;
        let addr6 = IpKey::from(backend_ip6(i).parse::<IpAddr>().unwrap());
        let info = BackendInfo { addr: IpKey::from_ipv4_octets(backend_ip(i)), port: BACKEND_PORT.to_be(), _pad: 0, service: SERVICE, addr6 };
        lab.dp.set_backend(i as u32 + 1, info).unwrap();
    }
    let table = table_of(backends);
    lab.dp.write_maglev((SERVICE - 1) * M, &table).unwrap();
    let info = ServiceInfo { table_base: (SERVICE - 1) * M, table_size: M, backends: backends.len() as u32, _pad: 0, affinity_ns };
    lab.dp.set_service(SERVICE, info).unwrap();
    let vip = PortKey { addr: IpKey::from_ipv4_octets(VIP), port: VIP_PORT.to_be(), proto, _pad: 0 };
    lab.dp.set_port(vip, PortTarget { service: SERVICE, network: NETWORK, ..PortTarget::default() }).unwrap();
    let published = PortKey::any_ipv4_address(PUBLISHED_PORT.to_be(), proto);
    lab.dp.set_port(published, PortTarget { service: SERVICE, ..PortTarget::default() }).unwrap();
    lab.dp.set_vip(IpAddr::from(VIP), NETWORK).unwrap();
    table
}

/// The service's IPv6 VIP (on network 1's IPv6 subnet, see [`GATEWAY_IP6`]).
pub const VIP6: &str = "fd00:1::64";

/// Backend `i`'s IPv6 address.
pub fn backend_ip6(i: usize) -> String {
    v6_of(backend_ip(i))
}

/// As [`install`], dual stack: the backends' IPv6 addresses are endpoints too, the service has
/// an IPv6 VIP, and its published port covers IPv6's every address.
pub fn install6(lab: &mut Lab, proto: u8, backends: &[usize], affinity_ns: u64) -> Vec<u32> {
    let table = install(lab, proto, backends, affinity_ns);
    let words = |text: &str| IpKey::from(text.parse::<IpAddr>().unwrap()).addr;
    for &i in backends {
        let info = EndpointInfo { host_ifindex: backend_ifindex(i), network_id: NETWORK, mac: backend_mac(i), ..Default::default() };
        lab.dp.set_endpoint(backend_ip6(i).parse().unwrap(), info).unwrap();
        let iface = IfaceInfo {
            network_id: NETWORK,
            ipv4: backend_ip(i),
            gateway_ipv4: GATEWAY_IP,
            flags: lab.flags | iface_flags::SERVICE_BACKEND,
            mac: backend_mac(i),
            ipv6: words(&backend_ip6(i)),
            gateway_ipv6: words(GATEWAY_IP6),
            ..Default::default()
        };
        lab.dp.set_iface(backend_ifindex(i), iface).unwrap();
    }
    let vip6: IpAddr = VIP6.parse().unwrap();
    let key = PortKey { addr: IpKey::from(vip6), port: VIP_PORT.to_be(), proto, _pad: 0 };
    lab.dp.set_port(key, PortTarget { service: SERVICE, network: NETWORK, ..PortTarget::default() }).unwrap();
    let published = PortKey::any_ipv6_address(PUBLISHED_PORT.to_be(), proto);
    lab.dp.set_port(published, PortTarget { service: SERVICE, ..PortTarget::default() }).unwrap();
    lab.dp.set_vip(vip6, NETWORK).unwrap();
    table
}

/// The backend (index) the datapath must choose for this IPv6 tuple.
pub fn predicted6(table: &[u32], src: &str, dst: &str, sport: u16, dport: u16, proto: u8) -> usize {
    let word = |a: &str| IpKey::from(a.parse::<IpAddr>().unwrap()).hash_word();
    let hash = flow_hash(word(src), word(dst), sport.to_be(), dport.to_be(), proto);
    table[(hash % M) as usize] as usize - 1
}

/// Which backend an IPv6 packet was delivered to.
pub fn which_backend6(p: &[u8]) -> usize {
    (0..8).find(|&i| p[14 + 24..14 + 40] == v6(&backend_ip6(i))).expect("delivered to a backend")
}

/// The Maglev table over backends `backends`, as backend ids (what the daemon builds).
pub fn table_of(backends: &[usize]) -> Vec<u32> {
    if backends.is_empty() {
        return vec![0; M as usize];
    }
    let names: Vec<String> = backends.iter().map(|&i| format!("{}:{BACKEND_PORT}", IpAddr::from(backend_ip(i)))).collect();
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    maglev::table(&refs, M).unwrap().into_iter().map(|k| backends[k as usize] as u32 + 1).collect()
}

/// The backend (index) the datapath must choose for this tuple.
pub fn predicted(table: &[u32], src: [u8; 4], dst: [u8; 4], sport: u16, dport: u16, proto: u8) -> usize {
    let word = |a: [u8; 4]| u32::from_ne_bytes(a);
    let hash = flow_hash(word(src), word(dst), sport.to_be(), dport.to_be(), proto);
    table[(hash % M) as usize] as usize - 1
}


/// Which backend a delivered packet went to.
pub fn which_backend(p: &[u8]) -> usize {
    (0..8).find(|&i| p[14 + 16..14 + 20] == backend_ip(i)).expect("delivered to a backend")
}
