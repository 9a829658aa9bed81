//! Service load balancing: a service is a virtual address and port (and optionally a published
//! host port) spread over backends by Maglev consistent hashing.
//!
//! - `PORTS` (see [`crate::ports`]) leads a service's VIP:port, and its published host port, to
//!   the service: [`crate::PortTarget::service`].
//! - `SERVICES`: array, service id -> [`ServiceInfo`] (where its Maglev table lies, how many
//!   backends it has, its client-IP affinity).
//! - `MAGLEV`: one flat, memory-mappable array of backend ids; service `s` owns
//!   `table_size` consecutive slots from `table_base`. The daemon writes whole tables through
//!   its mapping (no syscall per slot); the datapath reads one slot per new connection.
//! - `BACKENDS`: array, backend id -> [`BackendInfo`] (address and port; `service` 0: unused).
//!   Only backends that take new connections are here: a draining or removed one is not.
//! - `AFFINITY`: LRU, (service, client address) -> the backend it was last sent to, and when.
//! - `VIPS`: VIP -> the network it belongs to, for the ARP responder.
use bytemuck::{Pod, Zeroable};

use crate::IpKey;

/// Maglev's lookup table size (a prime; Cilium's default too): with N backends each owns about
/// M/N slots, and a backend change moves about 1/N of them.
pub const DEFAULT_MAGLEV_TABLE_SIZE: u32 = 16_381;
/// Services the tables are sized for by default (`bpfnet daemon --max-services`).
pub const DEFAULT_MAX_SERVICES: u32 = 1_024;
/// Backends of all services together, by default (`bpfnet daemon --max-backends`).
pub const DEFAULT_MAX_BACKENDS: u32 = 65_536;
/// Client-IP affinity records (LRU: the least recently used goes first).
pub const AFFINITY_ENTRIES: u32 = 65_536;
/// Service VIPs the ARP responder knows.
pub const MAX_VIPS: u32 = 65_536;

#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, Pod, Zeroable)]
pub struct ServiceInfo {
    /// First slot of the service's table in `MAGLEV`.
    pub table_base: u32,
    /// Slots of the table (0: the service does not exist).
    pub table_size: u32,
    /// Backends in the table; 0: new connections are refused (TCP reset, ICMP port unreachable).
    pub backends: u32,
    pub _pad: u32,
    /// Client-IP affinity: a client's new connections go to its last backend while it was used
    /// within this many ns (0: no affinity, the 5-tuple chooses).
    pub affinity_ns: u64,
}

const _: () = assert!(core::mem::size_of::<ServiceInfo>() == 24);

/// Two consecutive Maglev slots (backend ids): `MAGLEV`'s element. An array map aligns each
/// element to 8 bytes, so pairs keep the table dense (4 bytes a slot) and the daemon's mapping
/// of it one flat `u32` array: slot `s` is element `s / 2`, half `s % 2`.
pub type MaglevPair = [u32; 2];

#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, Pod, Zeroable)]
pub struct BackendInfo {
    /// Where the service's IPv4 connections go (its VIP's, and its IPv4 publications').
    pub addr: IpKey,
    /// Network order.
    pub port: u16,
    pub _pad: u16,
    /// The service the backend serves (0: the slot is unused).
    pub service: u32,
    /// Where its IPv6 connections go (zero: none, on a network without IPv6).
    pub addr6: IpKey,
}

const _: () = assert!(core::mem::size_of::<BackendInfo>() == 40);

impl BackendInfo {
    /// The backend's address for a connection of that family (zero: it has none).
    #[inline(always)]
    pub fn address(&self, ipv6: bool) -> IpKey {
        if ipv6 {
            self.addr6
        } else {
            self.addr
        }
    }
}

#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default, Pod, Zeroable)]
pub struct AffinityKey {
    pub service: u32,
    pub _pad: u32,
    pub client: IpKey,
}

const _: () = assert!(core::mem::size_of::<AffinityKey>() == 24);

#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, Pod, Zeroable)]
pub struct AffinityValue {
    pub backend: u32,
    pub _pad: u32,
    /// CLOCK_MONOTONIC (coarse) ns of the client's last new connection.
    pub last_ns: u64,
}

const _: () = assert!(core::mem::size_of::<AffinityValue>() == 16);

/// The hash a new connection's backend is chosen by: its 5-tuple (addresses as
/// [`crate::IpKey::hash_word`], ports in network order, as in the packet), or only the client's
/// address with affinity. The daemon uses the same function
/// in tests to predict the datapath's choice.
#[inline(always)]
pub fn flow_hash(saddr: u32, daddr: u32, sport: u16, dport: u16, proto: u8) -> u32 {
    let mut h = mix(0x9e37_79b9 ^ saddr);
    h = mix(h ^ daddr);
    h = mix(h ^ ((sport as u32) << 16 | dport as u32));
    mix(h ^ proto as u32)
}

/// murmur3's finalizer: every input bit flips about half of the output bits.
#[inline(always)]
const fn mix(mut x: u32) -> u32 {
    x ^= x >> 16;
    x = x.wrapping_mul(0x85eb_ca6b);
    x ^= x >> 13;
    x = x.wrapping_mul(0xc2b2_ae35);
    x ^ (x >> 16)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flow_hash_spreads_consecutive_ports() {
        // 30,000 consecutive source ports over 3 buckets of a prime table: each within 3%.
        let m = 16_381u32;
        let mut buckets = [0u32; 3];
        for port in 30_000u16..60_000 {
            let slot = flow_hash(0x0a00_0002, 0x0a00_0064, port.to_be(), 80u16.to_be(), 6) % m;
            buckets[(slot % 3) as usize] += 1;
        }
        for b in buckets {
            assert!((9_700..10_300).contains(&b), "{buckets:?}");
        }
    }
}
