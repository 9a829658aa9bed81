//! Addresses as map keys.
use core::net::{IpAddr, Ipv6Addr};

use bytemuck::{Pod, Zeroable};

/// An IP address as a map key: IPv4 is stored IPv4-mapped (`::ffff:a.b.c.d`) so IPv6 can later use
/// the same maps without a layout change. Stored as four words holding the address bytes in wire
/// order, so the datapath builds a key with four word stores (a byte array compiles to a memset
/// and byte copies in eBPF).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default, Pod, Zeroable)]
pub struct IpKey {
    pub addr: [u32; 4],
}

impl IpKey {
    /// `octets` is the address as it appears on the wire (a.b.c.d).
    #[inline(always)]
    pub const fn from_ipv4_octets(octets: [u8; 4]) -> Self {
        Self { addr: [0, 0, u32::from_ne_bytes([0, 0, 0xff, 0xff]), u32::from_ne_bytes(octets)] }
    }

    /// `word` holds the address bytes in wire order (as loaded from a packet).
    #[inline(always)]
    pub const fn from_ipv4_word(word: u32) -> Self {
        Self { addr: [0, 0, u32::from_ne_bytes([0, 0, 0xff, 0xff]), word] }
    }

    /// The IPv4 address as the wire-order word, if this is an IPv4-mapped key.
    #[inline(always)]
    pub const fn ipv4_word(&self) -> u32 {
        self.addr[3]
    }

    /// One word standing for the address in a hash: an IPv4 key's is its address word (what
    /// IPv4's hashes always took), an IPv6 key's all four words folded together. No branch.
    #[inline(always)]
    pub const fn hash_word(&self) -> u32 {
        self.addr[0] ^ self.addr[1] ^ self.addr[2] ^ u32::from_ne_bytes([0, 0, 0xff, 0xff]) ^ self.addr[3]
    }

    /// Whether this is an IPv4 address's key (IPv4-mapped), not an IPv6 address's.
    #[inline(always)]
    pub const fn is_ipv4(&self) -> bool {
        self.addr[0] == 0 && self.addr[1] == 0 && self.addr[2] == u32::from_ne_bytes([0, 0, 0xff, 0xff])
    }

    /// `octets` is the IPv6 address as it appears on the wire.
    pub fn from_ipv6_octets(octets: [u8; 16]) -> Self {
        let word = |i: usize| u32::from_ne_bytes([octets[i], octets[i + 1], octets[i + 2], octets[i + 3]]);
        Self { addr: [word(0), word(4), word(8), word(12)] }
    }

    /// The address bytes in wire order.
    pub fn octets(&self) -> [u8; 16] {
        let mut out = [0u8; 16];
        for (i, word) in self.addr.iter().enumerate() {
            out[i * 4..i * 4 + 4].copy_from_slice(&word.to_ne_bytes());
        }
        out
    }
}

impl From<IpAddr> for IpKey {
    fn from(ip: IpAddr) -> Self {
        match ip {
            IpAddr::V4(v4) => Self::from_ipv4_octets(v4.octets()),
            IpAddr::V6(v6) => Self::from_ipv6_octets(v6.octets()),
        }
    }
}

impl From<IpKey> for IpAddr {
    /// An IPv4-mapped key is the IPv4 address it maps.
    fn from(key: IpKey) -> Self {
        let v6 = Ipv6Addr::from(key.octets());
        match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(v6),
        }
    }
}

const _: () = assert!(core::mem::size_of::<IpKey>() == 16);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv4_keys_are_ipv4_mapped_in_wire_order() {
        let key = IpKey::from_ipv4_octets([10, 1, 2, 3]);
        assert_eq!(key.octets(), [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 10, 1, 2, 3]);
        assert_eq!(key, IpKey::from(IpAddr::from([10, 1, 2, 3])));
    }

    #[test]
    fn an_ipv4_keys_hash_word_is_its_address() {
        let key = IpKey::from_ipv4_octets([10, 1, 2, 3]);
        assert_eq!(key.hash_word(), key.ipv4_word());
        let a = IpKey::from("fd00::1".parse::<IpAddr>().unwrap());
        let b = IpKey::from("fd00::2".parse::<IpAddr>().unwrap());
        assert_ne!(a.hash_word(), b.hash_word());
    }

    #[test]
    fn keys_convert_back_to_the_address() {
        for text in ["10.1.2.3", "fd00::1", "::1"] {
            let ip: IpAddr = text.parse().unwrap();
            assert_eq!(IpAddr::from(IpKey::from(ip)), ip, "{text}");
        }
    }
}
