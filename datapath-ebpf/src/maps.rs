//! The forwarding maps (connection tracking keeps its own, in `conntrack`). Layouts come from
//! `datapath-common`; the daemon pins and fills them.
use aya_ebpf::{
    macros::map,
    maps::{HashMap, PerCpuArray},
};
use datapath_common::{
    sockets::MAX_HOST_ADDRS, Counter, EndpointInfo, IfaceInfo, IpKey, PortKey, PortTarget, UplinkInfo, MAX_ENDPOINTS,
    MAX_PUBLISHED_PORTS, MAX_UPLINKS,
};

/// Endpoint IP -> where to deliver it.
#[map(name = "ENDPOINTS")]
pub static ENDPOINTS: HashMap<IpKey, EndpointInfo> = HashMap::with_max_entries(MAX_ENDPOINTS, 0);

/// Host-side veth ifindex -> the endpoint (and its network's options) sending on it.
#[map(name = "IFACES")]
pub static IFACES: HashMap<u32, IfaceInfo> = HashMap::with_max_entries(MAX_ENDPOINTS, 0);

/// What happened to packets, one slot per [`Counter`], per CPU (no atomics on bpfel).
#[map(name = "COUNTERS")]
pub static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(Counter::COUNT, 0);

/// Uplink ifindex -> the address masquerade gives traffic leaving by it.
#[map(name = "UPLINKS")]
pub static UPLINKS: HashMap<u32, UplinkInfo> = HashMap::with_max_entries(MAX_UPLINKS, 0);

/// Every address of the daemon's namespace (the daemon keeps it current): where a port published
/// on every address answers.
#[map(name = "HOST_ADDRS")]
pub static HOST_ADDRS: HashMap<IpKey, u8> = HashMap::with_max_entries(MAX_HOST_ADDRS, 0);

/// Whether `addr` is one of the host's addresses (127.0.0.0/8 included), as iptables'
/// `--dst-type LOCAL` asks; a map lookup where a FIB lookup would cost several times more.
#[inline(always)]
pub fn is_host_address(addr: &IpKey) -> bool {
    // 127.0.0.0/8: the first byte on the wire is the word's first byte in memory.
    // SAFETY: read-only lookup.
    addr.ipv4_word().to_ne_bytes()[0] == 127 || unsafe { HOST_ADDRS.get(addr) }.is_some()
}

/// As [`is_host_address`] for an address of either family (`ipv6`: `::1` is loopback).
#[inline(always)]
pub fn is_host_address_of(addr: &IpKey, ipv6: bool) -> bool {
    const LOOPBACK: [u32; 4] = [0, 0, 0, u32::from_ne_bytes([0, 0, 0, 1])];
    if !ipv6 {
        return is_host_address(addr);
    }
    // SAFETY: read-only lookup.
    addr.addr == LOOPBACK || unsafe { HOST_ADDRS.get(addr) }.is_some()
}

/// Published ports: (host address or any, port, protocol) -> container address and port.
#[map(name = "PORTS")]
pub static PORTS: HashMap<PortKey, PortTarget> = HashMap::with_max_entries(MAX_PUBLISHED_PORTS, 0);
