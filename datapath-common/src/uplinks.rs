//! `UPLINKS`: ifindex of an interface traffic leaves the host by -> the address masquerade
//! gives it. The daemon attaches the uplink program to each and keeps their addresses current.
use bytemuck::{Pod, Zeroable};

use crate::IpKey;

pub const MAX_UPLINKS: u32 = 64;

#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, Pod, Zeroable)]
pub struct UplinkInfo {
    /// The source address of masqueraded traffic leaving by this interface.
    pub addr: IpKey,
}
