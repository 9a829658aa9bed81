//! `UPLINKS`: ifindex of an interface traffic leaves the host by -> the addresses masquerade
//! gives it (IPv4, and IPv6 where the uplink has a global one). The daemon attaches the uplink program to each and keeps their addresses current
//! (checked every 2 s).
use bytemuck::{Pod, Zeroable};

use crate::IpKey;

pub const MAX_UPLINKS: u32 = 64;

/// [`UplinkInfo::flags`].
pub mod uplink_flags {
    /// The uplink is a veth: a packet for it is handed to its peer directly
    /// (`bpf_redirect_peer`), which is what transmitting on it amounts to, without a second pass
    /// through the receive backlog (a physical uplink costs the host no such pass either).
    pub const VETH: u32 = 1 << 0;
}

#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, Pod, Zeroable)]
pub struct UplinkInfo {
    /// The source address of masqueraded IPv4 traffic leaving by this interface.
    pub addr: IpKey,
    /// The source address of masqueraded IPv6 traffic leaving by it; all zero: none (IPv6
    /// from containers is not masqueraded out of this uplink).
    pub addr6: IpKey,
    /// [`uplink_flags`].
    pub flags: u32,
}

const _: () = assert!(core::mem::size_of::<UplinkInfo>() == 36);
