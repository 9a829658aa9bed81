//! Addresses as map keys.
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

    /// The address bytes in wire order.
    pub fn octets(&self) -> [u8; 16] {
        let mut out = [0u8; 16];
        for (i, word) in self.addr.iter().enumerate() {
            out[i * 4..i * 4 + 4].copy_from_slice(&word.to_ne_bytes());
        }
        out
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
    }
}
