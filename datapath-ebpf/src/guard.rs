//! What may arrive from where: the checks that stand where Docker's raw-table and filter rules
//! stand (martian addresses, spoofed sources, direct routing to containers from the LAN).
//!
//! - From an uplink, a packet no tracked connection or publication takes is the host's, except:
//!   a martian source or destination (`drop_martian`), a source that is a container's or the
//!   host's own (`drop_uplink_spoofed`), a destination that is a container's
//!   (`drop_uplink_to_container`: the host would forward it, and containers are reached from
//!   outside through published ports only).
//! - From a container (whose source is already its own): a loopback or `0.0.0.0/8` destination
//!   (`drop_martian`: a publication on 127.0.0.1 is the host's processes' only).
use datapath_common::{Counter, IpKey};

use crate::maps::{ENDPOINTS, HOST_ADDRS};

/// The first byte of a wire-order address word.
#[inline(always)]
fn first_byte(word: u32) -> u8 {
    word.to_ne_bytes()[0]
}

/// 127.0.0.0/8 or 0.0.0.0/8: no packet on a wire comes from or goes to them (RFC 1122).
#[inline(always)]
pub fn martian_destination(word: u32) -> bool {
    matches!(first_byte(word), 0 | 127)
}

/// As [`martian_destination`], and multicast or broadcast (224.0.0.0 and above), which are never
/// a sender's address.
#[inline(always)]
fn martian_source(word: u32) -> bool {
    martian_destination(word) || first_byte(word) >= 224
}

/// Why a packet from an uplink that nothing translated must not reach the host (which would
/// answer it or forward it), if it must not: `saddr`/`daddr` are wire-order words.
#[inline(always)]
pub fn uplink_refusal(saddr: u32, daddr: u32) -> Option<Counter> {
    if martian_source(saddr) || martian_destination(daddr) {
        return Some(Counter::DropMartian);
    }
    let source = IpKey::from_ipv4_word(saddr);
    // SAFETY: read-only lookups.
    if unsafe { ENDPOINTS.get(&source).is_some() || HOST_ADDRS.get(&source).is_some() } {
        return Some(Counter::DropUplinkSpoofed);
    }
    // SAFETY: as above.
    if unsafe { ENDPOINTS.get(&IpKey::from_ipv4_word(daddr)).is_some() } {
        return Some(Counter::DropUplinkToContainer);
    }
    None
}

/// As [`uplink_refusal`] for IPv6 (`saddr`/`daddr` in wire-order words): a martian source
/// (`::/8` but the unspecified address, which duplicate address detection sends from; multicast)
/// or destination (`::/8`: loopback, and the IPv4-mapped addresses, which would name IPv4's
/// entries), a container's or the host's own address as source, a container's as destination.
#[inline(always)]
pub fn uplink_refusal_v6(saddr: [u32; 4], daddr: [u32; 4]) -> Option<Counter> {
    let (src_first, dst_first) = (first_byte(saddr[0]), first_byte(daddr[0]));
    if (src_first == 0 && saddr != [0; 4]) || src_first == 0xff || dst_first == 0 {
        return Some(Counter::DropMartian);
    }
    let source = IpKey { addr: saddr };
    // SAFETY: read-only lookups.
    if unsafe { ENDPOINTS.get(&source).is_some() || HOST_ADDRS.get(&source).is_some() } {
        return Some(Counter::DropUplinkSpoofed);
    }
    // SAFETY: as above.
    if unsafe { ENDPOINTS.get(&IpKey { addr: daddr }).is_some() } {
        return Some(Counter::DropUplinkToContainer);
    }
    None
}
